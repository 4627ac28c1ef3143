"""gunicorn settings for a checkout: ``gunicorn -c gunicorn.conf.py wsgi:app``. The settings
and hooks ship inside the package (``waygate.gunicorn_conf``), so that an installed wheel
runs with the same ones through ``waygate serve``."""

from waygate.gunicorn_conf import *  # noqa: F403 - gunicorn reads this module's names
