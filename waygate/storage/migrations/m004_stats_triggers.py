"""Plugin statistics kept by triggers: one INSERT records an execution and counts it.

An execution counts once, when it reaches a final status: inserted final (single, batch,
MCP) or updated from pending/running to final (async, or closed by a sweep).
"""

from . import migrations

_COUNT = """
    INSERT INTO plugin_stats (plugin, calls_total, errors_total, duration_ms_total)
    VALUES (NEW.plugin, 1, NEW.status != 'success', coalesce(NEW.duration_ms, 0))
    ON CONFLICT(plugin) DO UPDATE SET
        calls_total = calls_total + 1,
        errors_total = errors_total + excluded.errors_total,
        duration_ms_total = duration_ms_total + excluded.duration_ms_total;
"""


@migrations()
def m004_stats_triggers(db):
    db.execute(
        "CREATE TRIGGER executions_count_insert AFTER INSERT ON executions "
        "WHEN NEW.plugin IS NOT NULL AND NEW.status NOT IN ('pending', 'running') "
        f"BEGIN {_COUNT} END"
    )
    db.execute(
        "CREATE TRIGGER executions_count_finish AFTER UPDATE OF status ON executions "
        "WHEN NEW.plugin IS NOT NULL AND OLD.status IN ('pending', 'running') "
        "AND NEW.status NOT IN ('pending', 'running') "
        f"BEGIN {_COUNT} END"
    )
