"""Key management over REST (admin keys only): create, list, inspect, change, rotate, revoke,
and the trail of key events. Secrets appear once, in the answer that creates them."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from ..errors import InvalidRequest
from ..keys import EVENTS, expiry
from ..principals import owner_for
from ..schemas import KeyCreateSchema, KeyRotateSchema, KeyUpdateSchema, load
from . import services
from .auth import admin_required, current_principal
from .http import read_object
from .pagination import add_headers, paginated, requested_page, requested_since

bp = Blueprint("keys", __name__)
_create, _update, _rotate = KeyCreateSchema(), KeyUpdateSchema(), KeyRotateSchema()
_INVALID = "invalid key request"


@bp.post("/keys")
@admin_required
def create_key():
    """Create a key; the answer carries its secret, once.
    ---
    post:
      summary: Create an API key (admin)
      tags: [keys]
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/KeyCreate"}
      responses:
        201:
          description: Created; "key" is the secret, shown only here
          content:
            application/json:
              schema: {$ref: "#/components/schemas/KeyWithSecret"}
        409:
          description: A live key of that name exists
    """
    body = load(_create, read_object(), invalid=_INVALID)
    principal = current_principal()
    owner, owner_name = owner_for(principal, body.get("owner"), body.get("owner_name"))
    record, secret = services().keys.create(
        body["name"],
        body["role"],
        allow=body["allow"],
        read_only=body["read_only"],
        expires_at=expiry(body.get("expires_in"), body.get("expires_at")),
        rate_limit=body.get("rate_limit"),
        actor=principal.actor,
        owner=owner,
        owner_name=owner_name,
    )
    return jsonify({**record.as_dict(), "key": secret}), 201


@bp.get("/keys")
@paginated
@admin_required
def list_keys():
    """Keys, oldest first (never secrets); ?revoked=false leaves revoked ones out.
    ---
    get:
      summary: List API keys (admin)
      tags: [keys]
      parameters:
        - {name: revoked, in: query, schema: {type: boolean, default: true}}
      responses:
        200:
          description: Keys
          content:
            application/json:
              schema: {$ref: "#/components/schemas/KeyList"}
    """
    revoked = request.args.get("revoked", "true")
    if revoked not in ("true", "false"):
        raise InvalidRequest("revoked must be true or false", {"parameter": "revoked"})
    include_revoked = revoked == "true"
    page = requested_page()
    store = services().keys
    listed = store.list(include_revoked, offset=page.offset, limit=page.limit)
    total = store.count(include_revoked)
    response = jsonify({"keys": [k.as_dict() for k in listed], "total": total})
    return add_headers(response, page, total)


@bp.get("/key-events")
@paginated
@admin_required
def key_events():
    """The trail of key events, newest first.
    ---
    get:
      summary: List key events (admin)
      tags: [keys]
      parameters:
        - {name: key, in: query, schema: {type: string}}
        - name: event
          in: query
          schema: {type: string, enum: [created, changed, rotated, revoked, expired_use]}
        - {name: since, in: query, schema: {type: string, format: date-time}}
      responses:
        200:
          description: Key events
          content:
            application/json:
              schema: {$ref: "#/components/schemas/KeyEventList"}
    """
    event = request.args.get("event") or None
    if event is not None and event not in EVENTS:
        raise InvalidRequest(f"event must be one of {', '.join(EVENTS)}", {"parameter": "event"})
    page = requested_page()
    events, total = services().keys.events(
        key_name=request.args.get("key") or None,
        event=event,
        since=requested_since(),
        offset=page.offset,
        limit=page.limit,
    )
    return add_headers(jsonify({"events": events, "total": total}), page, total)


@bp.get("/keys/<name>")
@admin_required
def get_key(name: str):
    """One live key.
    ---
    get:
      summary: Get an API key (admin)
      tags: [keys]
      parameters:
        - {name: name, in: path, required: true, schema: {type: string}}
      responses:
        200:
          description: The key
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Key"}
        404:
          description: No live key of that name
    """
    return jsonify(services().keys.get(name).as_dict())


@bp.patch("/keys/<name>")
@admin_required
def update_key(name: str):
    """Change a key's scope, expiry, rate limit or owner (null clears one).
    ---
    patch:
      summary: Change an API key (admin)
      tags: [keys]
      parameters:
        - {name: name, in: path, required: true, schema: {type: string}}
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/KeyUpdate"}
      responses:
        200:
          description: The changed key
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Key"}
        404:
          description: No live key of that name
        409:
          description: >-
            An expiry on the last live admin key (CONFLICT): create another admin key first,
            or use the CLI's --force
    """
    changes = load(_update, read_object(), invalid=_INVALID, partial=True)
    record = services().keys.update(name, changes, actor=current_principal().actor)
    return jsonify(record.as_dict())


@bp.post("/keys/<name>/rotate")
@admin_required
def rotate_key(name: str):
    """A new secret for the key; the old one stays valid for grace_seconds.
    ---
    post:
      summary: Rotate an API key (admin)
      tags: [keys]
      parameters:
        - {name: name, in: path, required: true, schema: {type: string}}
      requestBody:
        content:
          application/json:
            schema: {$ref: "#/components/schemas/KeyRotate"}
      responses:
        200:
          description: Rotated; "key" is the new secret, shown only here
          content:
            application/json:
              schema: {$ref: "#/components/schemas/KeyWithSecret"}
        404:
          description: No live key of that name
    """
    body = load(_rotate, read_object(), invalid=_INVALID)
    record, secret = services().keys.rotate(
        name, body["grace_seconds"], actor=current_principal().actor
    )
    return jsonify({**record.as_dict(), "key": secret})


@bp.delete("/keys/<name>")
@admin_required
def revoke_key(name: str):
    """Revoke a key: every worker refuses it from its next request; its requests awaiting
    approval end denied ("requester key revoked") in the same transaction.
    ---
    delete:
      summary: Revoke an API key (admin)
      tags: [keys]
      parameters:
        - {name: name, in: path, required: true, schema: {type: string}}
      responses:
        200:
          description: The revoked key
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Key"}
        404:
          description: No live key of that name
        409:
          description: >-
            The last live admin key (CONFLICT): create another admin key first, or use the
            CLI's --force
    """
    return jsonify(services().keys.revoke(name, actor=current_principal().actor).as_dict())
