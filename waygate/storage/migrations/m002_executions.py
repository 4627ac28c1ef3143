"""The audit log of command executions, per-plugin statistics and the plugin generation.

executions      one row per execution (single, batch item, async, MCP tool call); async rows
                are written when accepted and carry the result once done
plugin_stats    running totals per plugin, updated in the same transaction as the audit row,
                so they add up over every worker and survive restarts and audit pruning
plugin_state    one row: the plugin generation, bumped by a reload so every worker reloads

The sweep for executions left behind by a dead worker reads only unfinished rows
(``executions_open``, a partial index).
"""

from .migration import Migration

_INDEXES = [
    "CREATE INDEX executions_created ON executions(created_at)",
    "CREATE INDEX executions_action_created ON executions(action, created_at)",
    "CREATE INDEX executions_status_created ON executions(status, created_at)",
    "CREATE INDEX executions_open ON executions(worker_pid) WHERE status IN ('pending', 'running')",
]

migration = Migration(
    "m002_executions",
    sqlite=[
        """
        CREATE TABLE executions (
            command_id TEXT PRIMARY KEY,
            action TEXT NOT NULL,
            plugin TEXT,
            key_name TEXT,
            mode TEXT NOT NULL CHECK (mode IN ('sync', 'batch', 'async', 'mcp')),
            status TEXT NOT NULL
                CHECK (status IN ('pending', 'running', 'success', 'failed', 'timeout')),
            duration_ms INTEGER,
            error TEXT,
            result TEXT,
            timeout_s INTEGER NOT NULL,
            worker_pid INTEGER,
            created_at TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT
        )
        """,
        *_INDEXES,
        """
        CREATE TABLE plugin_stats (
            plugin TEXT PRIMARY KEY,
            calls_total INTEGER NOT NULL DEFAULT 0,
            errors_total INTEGER NOT NULL DEFAULT 0,
            duration_ms_total INTEGER NOT NULL DEFAULT 0
        )
        """,
        "CREATE TABLE plugin_state (id INTEGER PRIMARY KEY CHECK (id = 1), "
        "generation INTEGER NOT NULL, reloaded_at TEXT)",
        "INSERT INTO plugin_state (id, generation) VALUES (1, 0)",
    ],
    postgresql=[
        """
        CREATE TABLE executions (
            command_id TEXT PRIMARY KEY,
            action TEXT NOT NULL,
            plugin TEXT,
            key_name TEXT,
            mode TEXT NOT NULL CHECK (mode IN ('sync', 'batch', 'async', 'mcp')),
            status TEXT NOT NULL
                CHECK (status IN ('pending', 'running', 'success', 'failed', 'timeout')),
            duration_ms BIGINT,
            error TEXT,
            result TEXT,
            timeout_s BIGINT NOT NULL,
            worker_pid BIGINT,
            created_at TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT
        )
        """,
        *_INDEXES,
        """
        CREATE TABLE plugin_stats (
            plugin TEXT PRIMARY KEY,
            calls_total BIGINT NOT NULL DEFAULT 0,
            errors_total BIGINT NOT NULL DEFAULT 0,
            duration_ms_total BIGINT NOT NULL DEFAULT 0
        )
        """,
        "CREATE TABLE plugin_state (id BIGINT PRIMARY KEY CHECK (id = 1), "
        "generation BIGINT NOT NULL, reloaded_at TEXT)",
        "INSERT INTO plugin_state (id, generation) VALUES (1, 0)",
    ],
)
