"""Human approval for destructive commands, in one place.

A command that needs approval is not run when asked for: its request (action, params as sent,
context, timeout, the caller's key id and a SHA-256 of the canonical params) is stored with
the status ``awaiting_approval`` and cannot change after that (a trigger of migration m012
refuses it). A second party, never the requesting key nor a key it created (directly or
through keys it created: ``policy.check_approver``), approves or denies it; an approved
execution runs exactly the stored request in the background, with its own timeout counted from
the approval. Nobody deciding within ``ttl_s`` ends it ``expired``. Every step is an event row
(``execution_events``) and, when a webhook is configured, a JSON POST.

    policy.py     which commands wait, which keys may decide (the two-person rule)
    workflow.py   the steps: hold, decide, expire, the trail; metrics and notifications
    records.py    the steps in storage: decisions, expiry, a revoked key's requests denied,
                  event rows, the stored request's hash
                  (an execution shows its approval part itself: audit.Execution.approval)
    webhook.py    who is told: the webhook's queue, retries and body

The command service holds a request (``CommandService.run``) and runs an approved one
(``CommandService.approve``) on its one execution path; the REST views
(``web/approvals_api.py``), MCP and the CLI all decide through it. Framework-free.
"""
