"""The HTTP face of Waygate: Flask blueprints over the framework-free service layer."""

from __future__ import annotations

from flask import current_app

from ..services import Services


def services() -> Services:
    return current_app.extensions["waygate"]
