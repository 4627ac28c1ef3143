"""gunicorn settings for Waygate, shipped in the package: ``waygate serve`` starts gunicorn with
them (``-c python:waygate.gunicorn_conf``), and the repository's ``gunicorn.conf.py`` imports
them. Any of them can be overridden with gunicorn's own flags (``--bind``, ``--workers`` ...)
or ``GUNICORN_CMD_ARGS``, which take precedence.

Importing this module does no work: the master's one-time start-up (config check,
migrations, the service start time) runs in the ``on_starting`` hook.
"""

import os
import signal
import sys
import threading

from waygate import compat
from waygate.accesslog import RedactingLogger
from waygate.config import Config, ConfigError
from waygate.logs import ACCESS_TEXT_FORMAT, JsonFormatter


def _read_config():
    """The validated config, or None when it is invalid: on_starting then refuses to start and
    says why in one line, so importing these settings never fails on a bad value."""
    try:
        return Config.from_env()
    except ConfigError:
        return None


_config = _read_config()

bind = "127.0.0.1:8000"
# Workers from the core count, as gunicorn recommends for request handling that mixes CPU
# work and waiting: (2 x cores) + 1.
workers = 2 * (os.cpu_count() or 1) + 1
# gthread: every request thread may wait on a command running in the worker's thread pool.
# With the sync worker one slow command would hold the whole process and the worker's
# health, readiness and other requests would queue behind it; threads keep those flowing
# while commands run. Async workers (gevent/eventlet) would monkey-patch the threads and
# SQLite calls the command engine relies on.
worker_class = "gthread"
# 16 request threads: at most all but two wait on commands (WAYGATE_COMMAND_REQUESTS), the
# rest stay free for health checks, metrics and quick refusals. WAYGATE_REQUEST_THREADS sets it,
# validated by Config like every other setting.
threads = (_config or Config()).request_threads
# Workers are not preloaded: each imports the app after fork, so no connection, executor or
# lock is shared across a fork, and SIGHUP really reloads code.
preload_app = False
timeout = 30
graceful_timeout = 30
keepalive = 5
# gunicorn's control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl), which
# two instances on one machine would fight over; Waygate is managed with signals instead.
control_socket_disable = True
# The longest request line gunicorn allows (its default, 4094, turns long list queries into
# 414s before Waygate sees them).
limit_request_line = 8190
# X-Forwarded-* are trusted in one place only: Waygate's ProxyFix, for exactly
# WAYGATE_TRUSTED_PROXIES hops (waygate/web/http.py). gunicorn's own handling would take
# X-Forwarded-Proto from any loopback client (and any client on a unix socket), whatever
# that setting says.
forwarded_allow_ips = ""
secure_scheme_headers = {}
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms request_id=%({x-request-id}o)s'


# gunicorn's own lines and its access lines, which get a timestamp like Waygate's; anything
# in a logged query string that looks like a key is redacted (waygate.accesslog).
# WAYGATE_LOG_FORMAT=json: every gunicorn line as one JSON object, request fields as keys.
logger_class = compat.gunicorn_logger_class(
    ACCESS_TEXT_FORMAT,
    JsonFormatter if _config and _config.log_format == "json" else None,
    base=RedactingLogger,
)


def on_starting(server):
    """Runs once in the master before any worker: validate config, migrate, mark the start."""
    from waygate.config import Config, ConfigError
    from waygate.leases import Leases
    from waygate.lifecycle import mark_service_start
    from waygate.metrics import prepare_multiprocess_dir
    from waygate.storage import DatabaseError, make_private_dir, open_storage

    # Everything the service writes (databases, metrics, latency samples) is its user's
    # alone, whatever umask it was started with; workers inherit it through fork.
    os.umask(os.umask(0o077) | 0o077)
    try:
        config = Config.from_env()
    except ConfigError as exc:
        print(f"waygate: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    make_private_dir(config.data_dir)
    storage = open_storage(config)
    try:
        storage.migrate()
    except (*DatabaseError, OSError) as exc:
        where = (
            storage.describe()
            if config.database_url
            else f"in {config.data_dir} (is the data dir writable?)"
        )
        print(f"waygate: cannot use the database {where}: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        # Nothing survives a restart: executions this host's previous service left open end
        # as failed (other hosts sharing the database keep theirs).
        Leases(storage, host=config.instance).fail_open_executions(
            "the service restarted while this command ran"
        )
    except DatabaseError as exc:  # e.g. a read-only data dir: start, and let /health say so
        server.log.warning("could not close executions left open: %s", exc)
    storage.close()
    # Before any worker imports prometheus_client: every worker then writes its metrics to
    # files here and any worker's /metrics adds them all up. Emptied at every master start.
    try:
        prepare_multiprocess_dir(config.data_dir / "prometheus")
    except OSError as exc:
        server.log.warning("could not empty the metrics directory: %s", exc)
    mark_service_start()


def pre_fork(server, worker):
    """In the master, before each worker is forked: the CPU it will be kept on."""
    worker.waygate_cpu = _least_used_cpu(server)


def post_fork(server, worker):
    """Keep the new worker, and every thread it will start, on the CPU chosen for it.

    A worker runs Python on one core at a time (the GIL), yet its request threads and
    command-pool threads hand each request over to each other several times. Left free,
    the kernel wakes those threads on whichever core is idle, and every hand-over between
    cores costs an inter-processor wake-up (a VM exit on virtual machines) and cold caches.
    Kept on one core, each worker's hand-overs stay local and the workers are spread evenly.
    Only while there are no more workers than CPUs: each worker then has a CPU of its own
    (2 workers on 2 CPUs: 1.12-1.14 x the requests per second, lower p99). With more (gunicorn's
    default 2 x cores + 1) a pinned worker waits for its CPU while another is idle, and the
    kernel's placement did as well or better (5 workers on 2 CPUs: 1.01-1.05 x the throughput
    within the noise, p99 up to 1.6 x worse pinned); bench/run.py --pinning, bench/README.md.
    WAYGATE_PIN_WORKERS=false turns it off (e.g. when something else pins the process).

    The worker also exports its real thread count (flags may have changed it), from which
    the app reserves threads that never wait on commands (WAYGATE_COMMAND_REQUESTS).
    """
    os.environ["WAYGATE_REQUEST_THREADS"] = str(worker.cfg.threads)
    cpu = getattr(worker, "waygate_cpu", None)
    if cpu is None:
        return
    try:
        os.sched_setaffinity(0, {cpu})  # this thread; threads started later inherit it
    except OSError as exc:
        server.log.warning("could not keep worker %s on CPU %s: %s", os.getpid(), cpu, exc)


def _least_used_cpu(server):
    # No config: on_starting has already refused to start.
    if _config is None or not _config.pin_workers or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2 or server.num_workers > len(allowed):
        return None
    load = dict.fromkeys(allowed, 0)
    for other in server.WORKERS.values():
        cpu = getattr(other, "waygate_cpu", None)
        if cpu in load:
            load[cpu] += 1
    return min(allowed, key=lambda cpu: (load[cpu], cpu))


def child_exit(server, worker):
    """A worker is gone (any cause, SIGKILL included): its unfinished async commands fail."""
    from waygate.config import Config
    from waygate.leases import Leases
    from waygate.metrics import mark_worker_dead
    from waygate.storage import DatabaseError, open_storage

    mark_worker_dead(worker.pid)
    config = Config.from_env()
    storage = open_storage(config)
    leases = Leases(storage, host=config.instance)
    try:
        closed = leases.fail_open_executions(
            f"the worker (pid {worker.pid}) running this command exited", worker_pid=worker.pid
        )
        if closed:
            server.log.warning("worker %s exited with %s command(s) unfinished", worker.pid, closed)
        leases.release(worker.pid)
    except DatabaseError as exc:  # the database is away: the sweep closes them later
        server.log.warning("could not close worker %s's executions: %s", worker.pid, exc)
    finally:
        storage.close()


def post_worker_init(worker):
    """Tell the app how it is served, and turn /ready to 503 as soon as the worker is told to
    stop (SIGTERM). With WAYGATE_DRAIN_SECONDS the worker keeps accepting for that long while
    /ready says 503, so a load balancer stops sending traffic before the listener closes."""
    from waygate.diagnostics import ServerInfo

    services = worker.wsgi.extensions["waygate"]
    cfg = worker.cfg
    services.server_info = ServerInfo(
        binds=tuple(cfg.bind),
        workers=cfg.workers,
        threads=cfg.threads,
        worker_connections=cfg.worker_connections,
        master_pid=worker.ppid,
    )
    stop = signal.getsignal(signal.SIGTERM)
    drain_seconds = services.config.drain_seconds

    def drain_then_stop(signum, frame):
        services.readiness.begin_draining()
        services.mcp.listeners.close_all()  # open subscriptions/listen streams end gracefully
        if not callable(stop):
            return
        if drain_seconds:
            threading.Timer(drain_seconds, stop, args=(signum, None)).start()
        else:
            stop(signum, frame)

    signal.signal(signal.SIGTERM, drain_then_stop)
