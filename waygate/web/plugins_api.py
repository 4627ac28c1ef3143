"""Plugin endpoints (spec 2.3): list, inspect with statistics, reload."""

from __future__ import annotations

from flask import Blueprint, jsonify

from . import services
from .auth import admin_required, key_required
from .pagination import add_headers, paginated, requested_page

bp = Blueprint("plugins", __name__)


@bp.get("/plugins")
@paginated
@key_required
def list_plugins():
    """Loaded plugins, failed ones included with their reason.
    ---
    get:
      summary: List loaded plugins
      tags: [plugins]
      responses:
        200:
          description: Plugins listed
          content:
            application/json:
              schema: {$ref: "#/components/schemas/PluginList"}
    """
    infos = list(services().plugins.current.plugins.values())
    page = requested_page()
    response = jsonify({"plugins": [i.as_dict() for i in page.slice(infos)], "total": len(infos)})
    return add_headers(response, page, len(infos))


@bp.get("/plugins/<plugin_name>")
@key_required
def get_plugin(plugin_name: str):
    """One plugin, with statistics summed over every worker.
    ---
    get:
      summary: Get specific plugin information
      tags: [plugins]
      parameters:
        - {name: plugin_name, in: path, required: true, schema: {type: string}}
      responses:
        200:
          description: Plugin found
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Plugin"}
        404:
          description: Plugin not found
    """
    info = services().plugins.get(plugin_name)
    return jsonify(
        {**info.as_dict(), "statistics": services().audit.statistics(info.name).as_dict()}
    )


@bp.post("/plugins/reload")
@admin_required
def reload_plugins():
    """Re-discover plugins; every worker follows within a second.
    ---
    post:
      summary: Reload all plugins (admin)
      tags: [plugins]
      responses:
        200:
          description: Plugins reloaded
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Reload"}
    """
    return jsonify(services().plugins.reload())
