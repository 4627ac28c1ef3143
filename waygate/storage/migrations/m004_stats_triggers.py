"""Plugin statistics kept by triggers: one INSERT records an execution and counts it.

An execution counts once, when it reaches a final status: inserted final (single, batch,
MCP) or updated from pending/running to final (async, or closed by a sweep). SQLite's trigger
body is PostgreSQL's trigger function.
"""

from .migration import Migration

COUNT_SQLITE = """
    INSERT INTO plugin_stats (plugin, calls_total, errors_total, duration_ms_total)
    VALUES (NEW.plugin, 1, NEW.status != 'success', coalesce(NEW.duration_ms, 0))
    ON CONFLICT(plugin) DO UPDATE SET
        calls_total = calls_total + 1,
        errors_total = errors_total + excluded.errors_total,
        duration_ms_total = duration_ms_total + excluded.duration_ms_total;
"""

_COUNT_FUNCTION = """
CREATE FUNCTION waygate_count_execution() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO plugin_stats (plugin, calls_total, errors_total, duration_ms_total)
    VALUES (NEW.plugin, 1, CASE WHEN NEW.status <> 'success' THEN 1 ELSE 0 END,
            coalesce(NEW.duration_ms, 0))
    ON CONFLICT (plugin) DO UPDATE SET
        calls_total = plugin_stats.calls_total + 1,
        errors_total = plugin_stats.errors_total + excluded.errors_total,
        duration_ms_total = plugin_stats.duration_ms_total + excluded.duration_ms_total;
    RETURN NULL;
END $$
"""

migration = Migration(
    "m004_stats_triggers",
    sqlite=[
        "CREATE TRIGGER executions_count_insert AFTER INSERT ON executions "
        "WHEN NEW.plugin IS NOT NULL AND NEW.status NOT IN ('pending', 'running') "
        f"BEGIN {COUNT_SQLITE} END",
        "CREATE TRIGGER executions_count_finish AFTER UPDATE OF status ON executions "
        "WHEN NEW.plugin IS NOT NULL AND OLD.status IN ('pending', 'running') "
        "AND NEW.status NOT IN ('pending', 'running') "
        f"BEGIN {COUNT_SQLITE} END",
    ],
    postgresql=[
        _COUNT_FUNCTION,
        "CREATE TRIGGER executions_count_insert AFTER INSERT ON executions FOR EACH ROW "
        "WHEN (NEW.plugin IS NOT NULL AND NEW.status NOT IN ('pending', 'running')) "
        "EXECUTE FUNCTION waygate_count_execution()",
        "CREATE TRIGGER executions_count_finish AFTER UPDATE OF status ON executions "
        "FOR EACH ROW WHEN (NEW.plugin IS NOT NULL AND OLD.status IN ('pending', 'running')"
        " AND NEW.status NOT IN ('pending', 'running')) "
        "EXECUTE FUNCTION waygate_count_execution()",
    ],
)
