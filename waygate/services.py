"""The one object that owns a Waygate instance's config and per-process services.

Framework-free: the Flask app, the CLI and the MCP stdio server each build one and hand it on.
Everything here is created after fork (inside a worker), never at import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from .admission import Admission
from .approvals.policy import ApprovalPolicy
from .approvals.records import ApprovalRecords
from .approvals.webhook import Notifier
from .approvals.workflow import Approvals
from .audit import AuditLog
from .auditchain import AuditChain, Signer
from .auditfile import AuditFile
from .commands import CommandService
from .config import Config
from .diagnostics import ServerInfo
from .errorlog import ErrorLog
from .housekeeping import Housekeeper
from .idempotency import Idempotency
from .keystore import KeyStore
from .latency import LatencyWindow
from .leases import Leases
from .lifecycle import Readiness
from .mcp.notify import ListenLimits, key_recheck
from .mcp.server import McpServer
from .metrics import metrics
from .oauth import ResourceServer
from .plugins import PluginRegistry, discover
from .pool import CommandPool
from .retention import Retention
from .sessions import SessionPolicy, Sessions
from .signin import SignIn
from .status import Status
from .storage import Storage, make_private_dir, open_storage
from .tracing import setup as setup_tracing
from .upstreams import UpstreamManager


def audit_chain(config: Config, storage: Storage) -> AuditChain | None:
    """The audit's hash chain with its signing key and audit file, unless switched off."""
    if not config.audit_chain:
        return None
    return AuditChain(
        storage,
        Signer(config.audit_signing_key_path),
        checkpoint_entries=config.audit_checkpoint_entries,
        checkpoint_interval_s=config.audit_checkpoint_interval_s,
        delay_s=config.audit_chain_delay_ms / 1000,
        trusted_keys=config.audit_trusted_keys,
        audit_file=AuditFile(Path(config.audit_log), config.audit_log_max_bytes)
        if config.audit_log
        else None,
        on_verified=lambda report: metrics().observe_audit_verification(report.intact),
    )


@dataclass
class Services:
    config: Config
    storage: Storage
    keys: KeyStore
    plugins: PluginRegistry
    audit: AuditLog
    leases: Leases
    approvals: Approvals
    commands: CommandService
    status: Status
    mcp: McpServer
    housekeeper: Housekeeper
    errors: ErrorLog
    latency: LatencyWindow
    idempotency: Idempotency
    readiness: Readiness = field(default_factory=Readiness)
    server_info: ServerInfo = field(default_factory=ServerInfo)
    oauth: ResourceServer | None = None  # with WAYGATE_OAUTH_ISSUER: bearer access tokens
    sessions: Sessions | None = None  # signed-in browsers: the console's and people's
    signin: SignIn | None = None  # with WAYGATE_OIDC_CLIENT_ID: people sign in at the issuer
    upstreams: UpstreamManager | None = None  # WAYGATE_UPSTREAMS: MCP servers behind the gate

    @classmethod
    def build(cls, config: Config) -> Services:
        make_private_dir(config.data_dir)
        setup_tracing(config)  # once per process; a no-op when off or already on
        storage = open_storage(config)
        storage.migrate()
        upstreams = (
            UpstreamManager(config.upstreams, config.upstream_connect_timeout_s)
            if config.upstreams
            else None
        )
        plugins = PluginRegistry(
            storage,
            config.plugin_config,
            loader=upstreams.loader(discover) if upstreams else discover,
            on_load=lambda s: metrics().plugins_loaded.set(len(s.loaded)),
            config_source=config.current_plugin_config,
        )
        if upstreams is not None:
            upstreams.on_change = plugins.refresh
        chain = audit_chain(config, storage)
        audit = AuditLog(
            storage,
            result_max_bytes=config.result_max_bytes,
            max_open_per_key=config.async_max_open_per_key,
            host=config.instance,
            chain=chain,
        )
        leases = Leases(storage, host=config.instance, lease_s=config.lease_s)
        keys = KeyStore(storage)
        approvals = Approvals(
            ApprovalRecords(audit),
            ApprovalPolicy(
                required=config.approval_required,
                exempt=config.approval_exempt,
                destructive_default=config.approval_destructive_default,
                ttl_s=config.approval_ttl_s,
            ),
            creators=keys.created_by_chain,
            notifier=Notifier(
                config.approval_webhook_url,
                attempts=config.approval_webhook_attempts,
                on_failure=metrics().count_webhook_failure,
                public_url=config.public_url,
            ),
            on_change=metrics().observe_approvals,
        )
        keys.on_requests_ended = approvals.requests_ended  # a revocation denies held requests
        pool = CommandPool(config.pool_size, config.pool_queue, on_change=metrics().observe_pool)
        commands = CommandService(
            lambda: plugins.current,
            pool,
            audit,
            observe=metrics().observe_command,
            admission=Admission(
                config.admission_limit,
                metrics().count_admission_refused,
                per_key=config.admission_per_key,
            ),
            approvals=approvals,
            leases=leases,
        )
        errors = ErrorLog(storage)
        oauth = ResourceServer(config) if config.oauth_issuer else None
        status = Status(commands)
        idempotency = Idempotency(
            storage,
            status,
            window_s=config.idempotency_ttl_s,
            wait_s=config.idempotency_wait_s,
            answer_max_bytes=config.result_max_bytes,
            admission=commands.admission,
        )
        sessions = Sessions(
            storage,
            keys,
            SessionPolicy(
                idle=timedelta(seconds=config.session_idle_s),
                absolute=timedelta(seconds=config.session_max_s),
            ),
        )
        built = cls(
            config=config,
            storage=storage,
            keys=keys,
            plugins=plugins,
            audit=audit,
            leases=leases,
            approvals=approvals,
            commands=commands,
            status=status,
            mcp=McpServer(
                commands,
                lambda: plugins.current,
                tool_timeout=config.mcp_tool_timeout,
                tool_timeout_max=config.mcp_tool_timeout_max,
                idempotency=idempotency,
                icon=config.mcp_icon,
                listen_limits=ListenLimits(config.mcp_listens, config.mcp_listens_per_key),
                task_ttl_ms=config.audit_retention_days * 86_400_000,  # tasks are executions
            ),
            housekeeper=Housekeeper(
                leases,
                Retention(
                    storage,
                    retention=timedelta(days=config.audit_retention_days),
                    max_bytes=config.audit_max_bytes,
                    chain=chain,
                    catch_up=audit.totals.catch_up,
                ),
                errors,
                config.housekeeping_interval_s,
                approvals=approvals,
                idempotency=idempotency,
                chain=chain,
                verify_entries=config.audit_verify_entries,
            ),
            errors=errors,
            latency=LatencyWindow(config.data_dir / "latency"),
            idempotency=idempotency,
            oauth=oauth,
            sessions=sessions,
            signin=SignIn(config, storage, oauth, sessions)
            if oauth and config.oidc_client_id
            else None,
            upstreams=upstreams,
        )
        # a listening key's scope is looked up again: a change is told, a revocation ends it
        built.mcp.listeners.recheck = key_recheck(keys.usable)
        built.mcp.listeners.on_count = metrics().observe_listens
        return built
