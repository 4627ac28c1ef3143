"""MCP tasks (issue 29): a task IS an execution (its ``command_id`` is the task id), so a task
lives where executions live, is owned by the key or person that created it, and is pruned with
its execution (nothing dangles). Four columns say what an execution row alone does not:

- ``task_ttl_ms``: set when the execution was created as an MCP task (NULL: not a task); the
  time-to-live promised to the client, in milliseconds from creation;
- ``cancel_requested_at``: when the task's owner asked for it to be cancelled (``tasks/cancel``);
  any worker sees it, and the worker running the execution sets its cancel flag;
- ``input_requests``: JSON object of the requests the running execution waits on the client to
  answer (``input_required``), keyed by ids unique over the task's life;
- ``input_responses``: JSON object of the client's answers not yet taken by the execution.

A partial index lists one owner's tasks newest first (``tasks/list``) without touching the
rows that are not tasks."""

from .migration import Migration

_BOTH = [
    "ALTER TABLE executions ADD COLUMN task_ttl_ms {integer}",
    "ALTER TABLE executions ADD COLUMN cancel_requested_at TEXT",
    "ALTER TABLE executions ADD COLUMN input_requests TEXT",
    "ALTER TABLE executions ADD COLUMN input_responses TEXT",
    "CREATE INDEX executions_tasks_by_owner ON executions(key_id, principal, created_at)"
    " WHERE task_ttl_ms IS NOT NULL",
]

migration = Migration(
    "m019_tasks",
    sqlite=[s.format(integer="INTEGER") for s in _BOTH],
    postgresql=[s.format(integer="BIGINT") for s in _BOTH],
)
