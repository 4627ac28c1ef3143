"""The one object that owns a Waygate instance's config and per-process services.

Framework-free: the Flask app, the CLI and the MCP stdio server each build one and hand it on.
Everything here is created after fork (inside a worker), never at import time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from .audit import AuditLog
from .clock import isoformat
from .commands import CommandService
from .config import Config
from .diagnostics import ServerInfo
from .errorlog import ErrorLog
from .housekeeping import Housekeeper
from .keys import KeyStore
from .latency import LatencyWindow
from .lifecycle import Readiness
from .metrics import metrics
from .plugins import PluginSet, discover
from .pool import CommandPool
from .storage import Storage, make_private_dir


class PluginRegistry:
    """This process's plugin set, kept in step with the shared plugin generation.

    A reload bumps the generation in SQLite; every worker compares its own (a per-process
    cache of the set, checked at most every ``CHECK_INTERVAL`` seconds) and reloads when it
    is behind, so no worker serves an old set for more than a second after a reload answers.
    A reload swaps in a new immutable set: commands already running keep theirs.
    """

    CHECK_INTERVAL = 0.5

    def __init__(
        self,
        storage: Storage,
        plugin_config=None,
        loader=discover,
        on_load: Callable[[PluginSet], None] | None = None,
    ):
        self._storage = storage
        self._loader = loader
        self._on_load = on_load
        self._plugin_config = plugin_config or {}
        self._lock = threading.Lock()
        self._current: PluginSet | None = None
        self._generation = -1
        self._checked_at = 0.0

    @property
    def current(self) -> PluginSet:
        if self._current is not None and time.monotonic() - self._checked_at <= self.CHECK_INTERVAL:
            return self._current
        # Past the interval: check under the lock, so that threads arriving while another one
        # loads the new set wait for it instead of being handed the old one.
        with self._lock:
            if self._current is None or time.monotonic() - self._checked_at > self.CHECK_INTERVAL:
                generation = self._shared_generation()
                if self._current is None or generation != self._generation:
                    self._install(generation, fresh=self._current is not None)
                self._checked_at = time.monotonic()
            return self._current

    def reload(self) -> PluginSet:
        """Reload here and tell every other worker to reload."""
        with self._storage.write() as conn:
            generation = conn.execute(
                "UPDATE plugin_state SET generation = generation + 1, reloaded_at = ? "
                "WHERE id = 1 RETURNING generation",
                (isoformat(),),
            ).fetchone()[0]
        with self._lock:
            self._install(generation, fresh=True)
            return self._current

    def _shared_generation(self) -> int:
        return self._storage.conn.execute(
            "SELECT generation FROM plugin_state WHERE id = 1"
        ).fetchone()[0]

    def _install(self, generation: int, fresh: bool) -> None:
        """Load and swap in a new set (the caller holds the lock)."""
        self._current = self._loader(self._plugin_config, fresh_modules=fresh)
        self._generation = generation
        self._checked_at = time.monotonic()
        if self._on_load is not None:
            self._on_load(self._current)


@dataclass
class Services:
    config: Config
    storage: Storage
    keys: KeyStore
    plugins: PluginRegistry
    audit: AuditLog
    commands: CommandService
    housekeeper: Housekeeper
    errors: ErrorLog
    latency: LatencyWindow
    readiness: Readiness = field(default_factory=Readiness)
    server_info: ServerInfo = field(default_factory=ServerInfo)

    @classmethod
    def build(cls, config: Config) -> Services:
        make_private_dir(config.data_dir)
        storage = Storage(config.database_path, busy_timeout_ms=config.db_busy_timeout_ms)
        storage.migrate()
        plugins = PluginRegistry(
            storage,
            config.plugin_config,
            on_load=lambda s: metrics().plugins_loaded.set(len(s.loaded)),
        )
        audit = AuditLog(storage, retention=timedelta(days=config.audit_retention_days))
        pool = CommandPool(config.pool_size, config.pool_queue, on_change=metrics().observe_pool)
        commands = CommandService(
            lambda: plugins.current, pool, audit, observe=metrics().observe_command
        )
        errors = ErrorLog(storage)
        return cls(
            config=config,
            storage=storage,
            keys=KeyStore(storage),
            plugins=plugins,
            audit=audit,
            commands=commands,
            housekeeper=Housekeeper(audit, errors, config.housekeeping_interval_s),
            errors=errors,
            latency=LatencyWindow(config.data_dir / "latency"),
        )
