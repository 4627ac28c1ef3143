"""Waygate's gunicorn settings without Waygate's hooks, for the bare-Flask ceiling."""

from pathlib import Path

exec((Path(__file__).resolve().parent.parent / "gunicorn.conf.py").read_text())  # noqa: S102
del on_starting, post_worker_init, child_exit  # noqa: F821
