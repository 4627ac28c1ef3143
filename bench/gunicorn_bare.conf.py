"""The bench's gunicorn settings (bench/gunicorn_bench.conf.py: Waygate's, plus a listening port
per worker) without Waygate's own hooks, for the bare-Flask ceiling. The worker pinning hooks
(pre_fork, post_fork) are gunicorn settings like any other: kept."""

from pathlib import Path

exec((Path(__file__).resolve().parent / "gunicorn_bench.conf.py").read_text())  # noqa: S102
del on_starting, child_exit  # noqa: F821
post_worker_init = listen_on_own_port  # noqa: F821 - Waygate's part needs Waygate's app
