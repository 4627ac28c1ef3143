"""WSGI entry point for a checkout: ``gunicorn -c gunicorn.conf.py wsgi:app``."""

from waygate.wsgi import app  # noqa: F401 - gunicorn looks it up here
