"""Waygate's gunicorn settings without Waygate's own hooks, for the bare-Flask ceiling. The
worker pinning hooks (pre_fork, post_fork) are gunicorn settings like any other: kept."""

from pathlib import Path

exec((Path(__file__).resolve().parent.parent / "gunicorn.conf.py").read_text())  # noqa: S102
del on_starting, post_worker_init, child_exit  # noqa: F821
