"""Waygate's gunicorn settings and hooks, plus one listening socket per worker, for bench/run.py.

With one listening socket shared by the workers, whichever worker wakes first accepts: wrk opens
all its connections at once, and now and then one worker takes (nearly) all of them while the
other idles. So each worker also listens on a port of its own (127.0.0.1, port 0) and writes it
to ``$BENCH_WORKER_PORTS_DIR/<pid>``; the bench drives every worker through its own port with
its own wrk. The normal bind stays (readiness, growth queries and scrapes use it). Without
``BENCH_WORKER_PORTS_DIR`` this is Waygate's own configuration. Never a product configuration.
"""

import os
from pathlib import Path

from gunicorn.sock import TCPSocket

from waygate.gunicorn_conf import *  # noqa: F403 - gunicorn reads this module's names
from waygate.gunicorn_conf import post_worker_init as _waygate_post_worker_init


def listen_on_own_port(worker):
    """Add a listener of this worker's own. gthread's run(), which starts after this hook,
    registers every socket in ``worker.sockets`` with its poller and accepts from it
    (``fileno``, ``setblocking``, ``accept``, ``getsockname``, ``close``). gunicorn's own socket
    class gives it the options of the shared listener (TCP_NODELAY above all: without it every
    response waits for a delayed ACK, ~40 ms)."""
    directory = os.environ.get("BENCH_WORKER_PORTS_DIR")
    if not directory:
        return
    listener = TCPSocket(("127.0.0.1", 0), worker.cfg, worker.log)
    worker.sockets.append(listener)
    written = Path(directory) / f".{os.getpid()}"
    written.write_text(str(listener.getsockname()[1]))
    written.rename(written.with_name(str(os.getpid())))  # whole, or not there yet


def post_worker_init(worker):
    _waygate_post_worker_init(worker)
    listen_on_own_port(worker)
