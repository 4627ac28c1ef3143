"""The WSGI application for gunicorn: ``waygate.wsgi:app`` (what ``waygate serve`` runs).

Importing it builds the app from the environment's ``WAYGATE_*`` settings."""

from .app import create_app

app = create_app()
