"""Plugin endpoints (spec 2.3): list, inspect with statistics, reload."""

from __future__ import annotations

from flask import Blueprint, jsonify

from ..plugins import PluginInfo, PluginSet
from . import services
from .auth import admin_required, current_key, key_required
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
    plugins = services().plugins.current
    infos = list(plugins.plugins.values())
    page = requested_page()
    shown = [_shown(i, plugins) for i in page.slice(infos)]
    response = jsonify({"plugins": shown, "total": len(infos)})
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
    shown = _shown(info, services().plugins.current)
    return jsonify({**shown, "statistics": services().audit.statistics(info.name).as_dict()})


def _shown(info: PluginInfo, plugins: PluginSet) -> dict:
    """A plugin as the caller may see it: secret config redacted (done at load, for every
    key), and only the commands the caller's key may run, as /mcp/commands lists them."""
    body = info.as_dict()
    body["commands"] = plugins.visible_commands(info, current_key().scope.permits)
    return body


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
