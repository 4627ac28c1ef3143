"""Test-only routes that exercise the cross-cutting machinery before real endpoints use it."""

from flask import Blueprint, jsonify

from waygate.web.auth import admin_required, current_key, key_required
from waygate.web.http import read_json

bp = Blueprint("probe", __name__)


@bp.get("/_probe/user")
@key_required
def user_only():
    return jsonify({"name": current_key().name})


@bp.get("/_probe/admin")
@admin_required
def admin_only():
    return jsonify({"name": current_key().name})


@bp.post("/_probe/json")
def echo_json():
    return jsonify({"received": read_json()})


@bp.get("/_probe/boom")
def boom():
    raise RuntimeError("secret detail in /srv/waygate/internal.py")
