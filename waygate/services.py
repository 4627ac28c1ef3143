"""The one object that owns a Waygate instance's config and per-process services.

Framework-free: the Flask app, the CLI and the MCP stdio server each build one and hand it on.
Everything here is created after fork (inside a worker), never at import time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .config import Config
from .keys import KeyStore
from .lifecycle import Readiness
from .plugins import PluginSet, discover
from .storage import Storage


class PluginRegistry:
    """This process's current plugin set; a reload swaps in a new immutable set."""

    def __init__(self, loader=discover):
        self._loader = loader
        self._lock = threading.Lock()
        self._current: PluginSet | None = None

    @property
    def current(self) -> PluginSet:
        if self._current is None:
            self.reload()
        return self._current

    def reload(self) -> PluginSet:
        with self._lock:
            self._current = self._loader()
            return self._current


@dataclass
class Services:
    config: Config
    storage: Storage
    keys: KeyStore
    plugins: PluginRegistry
    readiness: Readiness = field(default_factory=Readiness)

    @classmethod
    def build(cls, config: Config) -> Services:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        storage = Storage(config.database_path, busy_timeout_ms=config.db_busy_timeout_ms)
        storage.migrate()
        return cls(config=config, storage=storage, keys=KeyStore(storage),
                   plugins=PluginRegistry())
