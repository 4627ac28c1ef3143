"""Configuration: read once from ``WAYGATE_*`` environment variables, validated, immutable.

Every setting is documented in the README's configuration table. A bad value raises
:class:`ConfigError` whose message names the variable; entry points print that one line
and exit instead of showing a traceback.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import os
import re
import socket
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from limits import parse as parse_rate_limit

# Icons load in clients' user interfaces: only https URLs and inline images (the spec tells
# clients to reject everything else: javascript:, file:, http:, ...), of bounded size.
_ICON_SRC = re.compile(
    r"https://[^\s/?#]+[^\s]{0,2000}|data:image/[a-z0-9.+-]+(;[^,\s]{0,100})?,\S{1,65536}"
)


def icon_src_problem(src: Any) -> str | None:
    """Why ``src`` may not be an icon's source, or None."""
    if isinstance(src, str) and _ICON_SRC.fullmatch(src):
        return None
    return f"{str(src)[:60]!r} must be an https:// URL or a data:image/ URI (at most 64 KiB)"


class ConfigError(ValueError):
    """A configuration value that Waygate cannot start with."""


_RATE_LIMIT_DEFAULTS = {
    # spec section 5.1
    "rate_limit_execute": "100/minute",
    "rate_limit_health": "1000/minute",
    "rate_limit_metrics": "100/minute",
    "rate_limit_default": "500/minute",
    # refused keys per client address, every endpoint together
    "rate_limit_auth_failures": "100/minute",
}


@dataclasses.dataclass(frozen=True)
class Config:
    data_dir: Path = Path("var")
    cors_origins: tuple[str, ...] = ("http://localhost:3000",)
    rate_limit_execute: str = _RATE_LIMIT_DEFAULTS["rate_limit_execute"]
    rate_limit_health: str = _RATE_LIMIT_DEFAULTS["rate_limit_health"]
    rate_limit_metrics: str = _RATE_LIMIT_DEFAULTS["rate_limit_metrics"]
    rate_limit_default: str = _RATE_LIMIT_DEFAULTS["rate_limit_default"]
    rate_limit_auth_failures: str = _RATE_LIMIT_DEFAULTS["rate_limit_auth_failures"]
    # Empty means the embedded default: a SQLite file in the data dir, exact across workers.
    ratelimit_storage_uri: str = ""
    ratelimit_fail_open: bool = True
    max_body_bytes: int = 16 * 1024 * 1024
    trusted_proxies: int = 0
    # Scheme and host clients reach the service at (e.g. https://waygate.example.com):
    # absolute links are built from it, never from the request's Host. Empty: relative links.
    public_url: str = ""
    log_level: str = "INFO"
    # "text" lines or "json" (one object per line, for log shippers)
    log_format: str = "text"
    min_free_bytes: int = 64 * 1024 * 1024
    mode: str = "local_vm"
    db_busy_timeout_ms: int = 5000
    # postgresql://user:password@host:port/db: all state in PostgreSQL, shared by every host
    # that names it; empty: the SQLite file in the data dir. Never shown with its password.
    database_url: str = dataclasses.field(default="", repr=False)
    # PostgreSQL: connections per worker process; the longest a connect (and a wait for a
    # pooled connection) and a statement may take before the request gets 503 + Retry-After
    db_pool_size: int = 10
    db_connect_timeout_s: int = 5
    db_statement_timeout_ms: int = 30_000
    # seconds a worker's lease on its executions lasts without a heartbeat: past it another
    # worker (of any host) ends them as failed. The heartbeat comes every third of it.
    lease_s: int = 15
    # this host's name in execution leases; empty: the machine's host name and data dir
    instance_id: str = ""
    # command engine
    pool_size: int = 8
    pool_queue: int = 16
    batch_max: int = 50
    # request threads per gunicorn worker (gunicorn.conf.py reads it; workers export theirs)
    request_threads: int = 16
    # request threads of a worker that may wait on commands at once; beyond it a command
    # request is refused with 503 at once. 0: the request threads less two, kept for health
    # checks, metrics and quick refusals
    command_requests: int = 0
    # of those, the most one key may hold at once (0: half, at least 1); never all of them,
    # so that one key's flood leaves room for others. Beyond it: 429 at once
    command_requests_per_key: int = 0
    # MCP tools/call: the timeout (seconds) unless the client asks for another, and the most
    # a client may ask for (params._meta "waygate/timeout")
    mcp_tool_timeout: int = 30
    mcp_tool_timeout_max: int = 300
    # Waygate's own icon for MCP clients (serverInfo): an https:// URL or a data:image/ URI
    mcp_icon: str = ""
    # MCP subscriptions/listen streams a worker holds open at once (each holds a request
    # thread and one of the command slots; 0: listens are off), and of those one key's most
    mcp_listens: int = 4
    mcp_listens_per_key: int = 2
    audit_retention_days: int = 7
    # the audit database's budget: past it, the oldest finished executions are pruned first
    audit_max_bytes: int = 1024 * 1024 * 1024
    # the tamper-evident audit (waygate/auditchain.py): every finished execution and event
    # in a hash chain, checkpoints signed with an Ed25519 key (a PEM file; empty:
    # <data dir>/audit-signing.key, created on first use) every N entries or T seconds
    audit_chain: bool = True
    audit_signing_key: str = ""
    # other hosts' checkpoint keys this host's verification trusts (base64 public keys, as
    # `waygate audit public-key` prints them), for hosts that do not share one key file
    audit_trusted_keys: tuple[str, ...] = ()
    audit_checkpoint_entries: int = 1000
    audit_checkpoint_interval_s: int = 60
    # a finished execution's chain entry is written in a batch within this many ms of its
    # row's commit, off the request's path (one transaction a batch); 0: in the row's own
    # transaction (on PostgreSQL, four more round trips a request and the head row's lock)
    audit_chain_delay_ms: int = 200
    # entries each worker's housekeeping verifies a round (0: only `waygate audit verify`
    # and POST /admin/audit/verify)
    audit_verify_entries: int = 5000
    # a JSON Lines file every chained entry is appended to after its commit (empty: none),
    # rotated at the size given (logrotate may move it too)
    audit_log: str = ""
    audit_log_max_bytes: int = 100 * 1024 * 1024
    # an async execution's result is stored up to this size; a larger one is kept as a
    # truncated preview with a marker (see README)
    result_max_bytes: int = 1024 * 1024
    # async executions a key may have pending or running at once; beyond it 429
    async_max_open_per_key: int = 16
    housekeeping_interval_s: int = 30
    # Idempotency-Key (REST) and "waygate/idempotencyKey" (MCP): seconds a key is remembered
    # from its first request (a retry within it gets the first execution back), and the most
    # a retry waits for a first request still running before it is answered 409
    idempotency_ttl_s: int = 86_400
    idempotency_wait_s: int = 5
    # human approval (issue 17): command-name globs that always / never need approval; commands
    # annotated destructiveHint need it unless approval_destructive_default is off
    approval_required: tuple[str, ...] = ()
    approval_exempt: tuple[str, ...] = ()
    approval_destructive_default: bool = True
    # seconds a request waits for a decision before it ends expired
    approval_ttl_s: int = 900
    # http(s) URL that gets a JSON POST for every new pending approval and every decision
    # (user:password@ in it is sent as Basic auth; never shown)
    approval_webhook_url: str = dataclasses.field(default="", repr=False)
    approval_webhook_attempts: int = 4
    # seconds a worker keeps serving (with /ready at 503) after SIGTERM before it stops
    drain_seconds: int = 0
    # gunicorn workers each kept on one CPU, spread evenly (gunicorn.conf.py)
    pin_workers: bool = True
    # ?version=2 is deprecated (spec section 7); the date it stops working (RFC 8594 Sunset)
    version_param_sunset: str = "2027-07-01"
    # a link from an execution's trace id to a trace viewer: {trace_id} is replaced, e.g.
    # https://grafana.example.com/explore?...{trace_id} (Tempo) or .../trace/{trace_id} (Jaeger)
    trace_url_template: str = ""
    # OpenTelemetry traces, exported over OTLP/HTTP as the standard OTEL_* variables say
    # (docs/tracing.md); off: no span is made at all
    tracing: bool = False
    # a JSON file in the mcpServers format: MCP servers whose tools become commands behind
    # the gate (waygate/upstreams.py); empty: none
    upstreams: str = ""
    # seconds a worker waits at start-up and reload for an upstream to connect and list its
    # tools (one that takes longer joins when it is up)
    upstream_connect_timeout_s: int = 10
    # {"PluginName": {"key": value}}: overrides of plugins' default config (may hold secrets:
    # never in the repr, so never in a log line that shows the config)
    plugin_config: Mapping[str, Mapping[str, Any]] = dataclasses.field(
        default_factory=dict, repr=False
    )
    # OAuth 2.1 resource server (issue 27, waygate/oauth.py): the authorization server's
    # issuer URL; empty: API keys only. Its metadata is found by RFC 8414 / OpenID discovery.
    oauth_issuer: str = ""
    # the "aud" an access token must carry; empty: WAYGATE_PUBLIC_URL + "/mcp" (RFC 8707)
    oauth_audience: str = ""
    # accepted signature algorithms: asymmetric only (never none, never HS*)
    oauth_algorithms: tuple[str, ...] = (
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
    )  # fmt: skip
    # the claim naming a person's groups or roles (a dotted path reaches into objects:
    # realm_access.roles); members of the admin groups are admins, of the approver groups may
    # decide on approvals; with user groups set, everyone else is refused
    oauth_groups_claim: str = "groups"
    oauth_admin_groups: tuple[str, ...] = ()
    oauth_approver_groups: tuple[str, ...] = ()
    oauth_user_groups: tuple[str, ...] = ()
    # {"group": ["pattern", ...]}: a non-admin person's command allow-list is the union of
    # their groups' lists (as a scoped key's); empty: persons are not limited by group
    oauth_group_allow: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    # the OAuth scopes a token needs: the run scope for every allowed command, the read scope
    # for read-only ones (readOnlyHint)
    oauth_read_scope: str = "waygate:read"
    oauth_run_scope: str = "waygate:run"
    # RFC 7662 introspection of opaque tokens, with this resource server's own credentials
    oauth_introspection_client_id: str = ""
    oauth_introspection_client_secret: str = dataclasses.field(default="", repr=False)
    # the longest one fetch from the authorization server (metadata, keys, introspection)
    # may take; seconds between two key fetches for an unknown key id; clock leeway
    oauth_timeout_s: int = 5
    oauth_jwks_refresh_s: int = 30
    oauth_leeway_s: int = 30
    # sign-in for people (OpenID Connect, authorization code + PKCE) at the same issuer:
    # Waygate's client id there (and its secret, for a confidential client); empty: people
    # sign in with an API key
    oidc_client_id: str = ""
    oidc_client_secret: str = dataclasses.field(default="", repr=False)
    # the name on the console's "Sign in with <provider>" button; empty: the issuer's host
    oidc_provider_name: str = ""
    # a signed-in browser (the web console's, by key or by person; /auth's) is signed out after
    # this many seconds without a request, and this many after sign-in whatever happens
    session_idle_s: int = 1800
    session_max_s: int = 43200
    # the environment file the service was started with (`waygate serve` sets it to the file
    # it read): every plugin load, reloads included, reads WAYGATE_PLUGIN_CONFIG from it
    env_file: str = ""

    def current_plugin_config(self) -> Mapping[str, Mapping[str, Any]]:
        """WAYGATE_PLUGIN_CONFIG as the environment file says now (an operator edits it there
        and reloads), or as the service started when there is no file or the file does not
        set it. Read at every plugin load, so workers SIGHUP starts and workers that reload
        agree. ConfigError when the file cannot be read or its value is not valid."""
        if not self.env_file:
            return self.plugin_config
        from dotenv import dotenv_values

        name = "WAYGATE_PLUGIN_CONFIG"
        try:
            raw = dotenv_values(self.env_file).get(name)
        except OSError as exc:
            raise ConfigError(f"cannot read {self.env_file}: {exc.strerror}") from None
        if raw is None:
            return self.plugin_config
        return _parse(name, "plugin_config", raw.strip()) if raw.strip() else {}

    @property
    def admission_limit(self) -> int:
        """How many request threads may wait on commands at once (see command_requests)."""
        return self.command_requests or max(1, self.request_threads - 2)

    @property
    def oauth_resource(self) -> str:
        """The protected resource's identifier: the public /mcp URL (RFC 9728)."""
        return f"{self.public_url}/mcp"

    @property
    def effective_oauth_audience(self) -> str:
        return self.oauth_audience or self.oauth_resource

    @property
    def admission_per_key(self) -> int:
        """How many of a worker's command slots one key may hold (see command_requests_per_key)."""
        return self.command_requests_per_key or max(1, self.admission_limit // 2)

    @property
    def audit_signing_key_path(self) -> Path:
        return (
            Path(self.audit_signing_key)
            if self.audit_signing_key
            else (self.data_dir / "audit-signing.key")
        )

    @property
    def database_path(self) -> Path:
        return self.data_dir / "waygate.db"

    @property
    def instance(self) -> str:
        """This host's name in execution leases: unique per host and data dir."""
        if self.instance_id:
            return self.instance_id
        digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:8]
        return f"{socket.gethostname()}-{digest}"

    @property
    def effective_ratelimit_storage_uri(self) -> str:
        """The configured limit storage; unset: the shared database when there is one (exact
        across hosts), else a table in memory the workers share, mapped from a file of the
        data dir (exact across the workers of this host, waygate/limit_table.py)."""
        if self.ratelimit_storage_uri:
            return self.ratelimit_storage_uri
        return self.database_url or f"table:///{(self.data_dir / 'ratelimits.table').resolve()}"

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Build the config from ``WAYGATE_*`` variables; unset ones keep their defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = "WAYGATE_" + field.name.upper()
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                continue
            values[field.name] = _parse(name, field.name, raw.strip())
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        for field in _RATE_LIMIT_DEFAULTS:
            _check_rate_limit("WAYGATE_" + field.upper(), getattr(self, field))
        if not self.cors_origins:
            raise ConfigError("WAYGATE_CORS_ORIGINS: give at least one origin")
        for origin in self.cors_origins:
            if origin != "*" and not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+", origin):
                raise ConfigError(
                    f"WAYGATE_CORS_ORIGINS: {origin!r} is not an origin like http://host:port"
                )
        if self.max_body_bytes < 1024:
            raise ConfigError("WAYGATE_MAX_BODY_BYTES: must be at least 1024")
        if self.public_url and not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+", self.public_url):
            raise ConfigError(
                "WAYGATE_PUBLIC_URL: must be a scheme and host like https://waygate.example.com"
            )
        if not 0 <= self.trusted_proxies <= 10:
            raise ConfigError("WAYGATE_TRUSTED_PROXIES: must be a hop count from 0 to 10")
        if self.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(
                "WAYGATE_LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
            )
        if self.log_format not in ("text", "json"):
            raise ConfigError("WAYGATE_LOG_FORMAT: must be text or json")
        if self.min_free_bytes < 0:
            raise ConfigError("WAYGATE_MIN_FREE_BYTES: must not be negative")
        if self.db_busy_timeout_ms < 100:
            raise ConfigError("WAYGATE_DB_BUSY_TIMEOUT_MS: must be at least 100")
        if self.database_url:
            check_database_url(self.database_url)
        for name, low, high in (
            ("db_pool_size", 1, 1000),
            ("db_connect_timeout_s", 1, 300),
            ("db_statement_timeout_ms", 100, 3_600_000),
            ("lease_s", 3, 3600),
            ("pool_size", 1, 256),
            ("pool_queue", 0, 10_000),
            ("batch_max", 1, 1000),
            ("request_threads", 1, 1000),
            ("command_requests", 0, 1000),
            ("command_requests_per_key", 0, 1000),
            ("mcp_tool_timeout", 1, 3600),
            ("mcp_tool_timeout_max", 1, 3600),
            ("mcp_listens", 0, 1000),
            ("mcp_listens_per_key", 1, 1000),
            ("audit_retention_days", 1, 3650),
            ("audit_max_bytes", 1024 * 1024, 2**50),
            ("result_max_bytes", 1024, 2**31),
            ("async_max_open_per_key", 1, 100_000),
            ("housekeeping_interval_s", 0, 86_400),
            ("idempotency_ttl_s", 60, 30 * 86_400),
            ("idempotency_wait_s", 0, 60),
            ("audit_checkpoint_entries", 1, 10_000_000),
            ("audit_checkpoint_interval_s", 1, 86_400),
            ("audit_chain_delay_ms", 0, 10_000),
            ("audit_verify_entries", 0, 10_000_000),
            ("audit_log_max_bytes", 1024, 2**50),
            ("drain_seconds", 0, 300),
            ("approval_ttl_s", 1, 7 * 86_400),
            ("approval_webhook_attempts", 1, 10),
            ("upstream_connect_timeout_s", 1, 25),
        ):
            if not low <= getattr(self, name) <= high:
                raise ConfigError(f"WAYGATE_{name.upper()}: must be from {low} to {high}")
        if self.command_requests_per_key and self.command_requests_per_key >= self.admission_limit:
            raise ConfigError(
                "WAYGATE_COMMAND_REQUESTS_PER_KEY: must be less than a worker's command slots"
                f" ({self.admission_limit}, WAYGATE_COMMAND_REQUESTS), so that one key never"
                " holds them all; 0 gives half"
            )
        if self.mcp_icon and icon_src_problem(self.mcp_icon):
            raise ConfigError(f"WAYGATE_MCP_ICON: {icon_src_problem(self.mcp_icon)}")
        for key in self.audit_trusted_keys:
            try:
                valid = len(base64.b64decode(key, validate=True)) == 32
            except ValueError:
                valid = False
            if not valid:
                raise ConfigError(
                    f"WAYGATE_AUDIT_TRUSTED_KEYS: {key[:60]!r} is not a base64 Ed25519 public"
                    " key (what `waygate audit public-key` prints)"
                )
        if self.mcp_tool_timeout > self.mcp_tool_timeout_max:
            raise ConfigError(
                "WAYGATE_MCP_TOOL_TIMEOUT: must not exceed WAYGATE_MCP_TOOL_TIMEOUT_MAX"
            )
        try:
            date.fromisoformat(self.version_param_sunset)
        except ValueError:
            raise ConfigError(
                "WAYGATE_VERSION_PARAM_SUNSET: must be a date like 2027-07-01"
            ) from None
        for name in ("approval_required", "approval_exempt"):
            for pattern in getattr(self, name):
                if not re.fullmatch(r"[A-Za-z0-9_.\-*?\[\]!]{1,128}", pattern):
                    raise ConfigError(
                        f"WAYGATE_{name.upper()}: {pattern!r} is not a command-name glob"
                        " like drop_* or wipe_?"
                    )
        template = self.trace_url_template
        if template and not re.fullmatch(r"https?://[^\s]*\{trace_id\}[^\s]*", template):
            raise ConfigError(
                "WAYGATE_TRACE_URL_TEMPLATE: must be an http(s) URL containing {trace_id}"
            )
        hook = self.approval_webhook_url
        if hook:
            _check_webhook_url(hook)
        self._validate_oauth()
        uri = self.ratelimit_storage_uri
        if uri and not re.match(
            r"^(table|sqlite|redis|rediss|redis\+sentinel|redis\+cluster|memory|postgresql|postgres)://",
            uri,
        ):
            raise ConfigError(
                "WAYGATE_RATELIMIT_STORAGE_URI: use table:///path, sqlite:///path,"
                " redis://host:port, postgresql://... or memory://"
            )

    def _validate_oauth(self) -> None:
        for name, low, high in (
            ("oauth_timeout_s", 1, 60),
            ("oauth_jwks_refresh_s", 0, 3600),
            ("oauth_leeway_s", 0, 300),
            ("session_idle_s", 60, 86_400),
            ("session_max_s", 300, 30 * 86_400),
        ):
            if not low <= getattr(self, name) <= high:
                raise ConfigError(f"WAYGATE_{name.upper()}: must be from {low} to {high}")
        for alg in self.oauth_algorithms:
            if alg not in ASYMMETRIC_ALGORITHMS:
                raise ConfigError(
                    f"WAYGATE_OAUTH_ALGORITHMS: {alg[:20]!r} is not an asymmetric JWS algorithm"
                    f" ({', '.join(ASYMMETRIC_ALGORITHMS)})"
                )
        if not self.oauth_algorithms:
            raise ConfigError("WAYGATE_OAUTH_ALGORITHMS: give at least one algorithm")
        if not re.fullmatch(r"[A-Za-z0-9_:/.\-]{1,200}", self.oauth_groups_claim):
            raise ConfigError("WAYGATE_OAUTH_GROUPS_CLAIM: a claim name like groups or a.b")
        for name in ("oauth_read_scope", "oauth_run_scope"):
            if not re.fullmatch(r"[!#-\[\]-~]{1,200}", getattr(self, name)):
                raise ConfigError(f"WAYGATE_{name.upper()}: one OAuth scope token, no spaces")
        for group, patterns in self.oauth_group_allow.items():
            if not isinstance(patterns, (list, tuple)) or not all(
                isinstance(p, str) and re.fullmatch(r"[A-Za-z0-9_.*?\[\]!-]{1,128}", p)
                for p in patterns
            ):
                raise ConfigError(
                    f"WAYGATE_OAUTH_GROUP_ALLOW: {group[:60]!r} must map to a list of command"
                    ' patterns like ["db.*", "echo"]'
                )
        if bool(self.oauth_introspection_client_id) != bool(self.oauth_introspection_client_secret):
            raise ConfigError(
                "WAYGATE_OAUTH_INTROSPECTION_CLIENT_ID: give it with"
                " WAYGATE_OAUTH_INTROSPECTION_CLIENT_SECRET, or neither"
            )
        if self.oidc_client_secret and not self.oidc_client_id:
            raise ConfigError("WAYGATE_OIDC_CLIENT_SECRET: give it with WAYGATE_OIDC_CLIENT_ID")
        if self.oidc_client_id and not self.oauth_issuer:
            raise ConfigError(
                "WAYGATE_OIDC_CLIENT_ID: needs WAYGATE_OAUTH_ISSUER (people sign in there)"
            )
        if not self.oauth_issuer:
            return
        _check_secure_url("WAYGATE_OAUTH_ISSUER", self.oauth_issuer, allow_path=True)
        if not self.public_url:
            raise ConfigError(
                "WAYGATE_PUBLIC_URL: needed with WAYGATE_OAUTH_ISSUER (the protected resource's"
                " URL is built from it, never from the request's Host)"
            )
        if self.oauth_audience and not re.fullmatch(r"[^\s]{1,500}", self.oauth_audience):
            raise ConfigError("WAYGATE_OAUTH_AUDIENCE: one audience value, no spaces")


ASYMMETRIC_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
)  # fmt: skip


def _check_secure_url(name: str, url: str, *, allow_path: bool) -> None:
    """An https URL, or http on loopback only (tests, a proxy on the same host)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ConfigError(f"{name}: not a valid URL") from None
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if (
        parts.scheme not in ("https", "http")
        or not parts.hostname
        or (parts.scheme == "http" and not loopback)
        or parts.query
        or parts.fragment
        or (parts.path not in ("", "/") and not allow_path)
    ):
        raise ConfigError(
            f"{name}: must be an https:// URL without query or fragment (http:// only on localhost)"
        )


_ENCODE_HINT = (
    "percent-encode special characters of the user name and password (% as %25, @ as %40,"
    " / as %2F, : as %3A, ? as %3F, # as %23)"
)


def check_database_url(url: str, name: str = "WAYGATE_DATABASE_URL") -> None:
    """A PostgreSQL URL that PostgreSQL's client reads as Python does, or ConfigError naming
    ``name`` (the setting, or a CLI option that takes one); the message never repeats any of
    it (it may carry a password).

    Checked before anything hands the URL to libpq: libpq's own errors quote the part they
    could not read, and a password with a bare ``%`` or ``@`` in it is such a part (an invalid
    percent-escape, or a "host" that starts with the rest of the password)."""
    if re.search(r"%(?![0-9A-Fa-f]{2})", url):
        raise ConfigError(f"{name}: a '%' that does not start a percent-escape; {_ENCODE_HINT}")
    if url.count("@") > 1 or re.search(r"[/?#].*@", url.partition("://")[2]):
        raise ConfigError(f"{name}: an '@' besides the one before the host; {_ENCODE_HINT}")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise ConfigError(f"{name}: spaces and control characters must be encoded")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ConfigError(f"{name}: not a valid URL; {_ENCODE_HINT}") from None
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise ConfigError(f"{name}: use postgresql://user:password@host:port/database")
    # the same URL as libpq reads it: its user, host and port must be the ones Python read
    from psycopg.conninfo import conninfo_to_dict

    try:
        read = conninfo_to_dict(url)
    except Exception:  # noqa: BLE001 - its message would quote the URL
        raise ConfigError(f"{name}: not a valid URL; {_ENCODE_HINT}") from None
    ours = (
        unquote(parts.username or ""),
        (parts.hostname or "").lower(),
        str(parts.port or ""),
    )
    theirs = (read.get("user", ""), read.get("host", "").lower(), read.get("port", ""))
    if ours != theirs:
        raise ConfigError(
            f"{name}: PostgreSQL's client reads another user, host or port out"
            f" of it; {_ENCODE_HINT}"
        )


def _check_webhook_url(url: str) -> None:
    """An http(s) URL; user:password@ in it is allowed (sent as Basic auth) and never shown."""
    name = "WAYGATE_APPROVAL_WEBHOOK_URL"
    if not re.fullmatch(r"https?://[^\s]+", url):
        raise ConfigError(f"{name}: must be an http:// or https:// URL")
    if re.search(r"%(?![0-9A-Fa-f]{2})", url) or url.partition("#")[0].count("@") > 1:
        raise ConfigError(
            f"{name}: percent-encode special characters of its user name and password"
            " (% as %25, @ as %40)"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ConfigError(f"{name}: not a valid URL") from None
    if not parts.hostname:
        raise ConfigError(f"{name}: must name a host, like https://hooks.example.com/waygate")


def _check_rate_limit(name: str, value: str) -> None:
    try:
        parse_rate_limit(value)
    except ValueError:
        raise ConfigError(
            f"WAYGATE_{name.removeprefix('WAYGATE_')}: {value!r} is not a rate "
            "limit like 100/minute"
        ) from None


def _parse(name: str, field: str, raw: str) -> Any:
    kind = Config.__dataclass_fields__[field].type
    if field == "oauth_group_allow":
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{name}: not valid JSON ({exc.msg})") from None
        if not isinstance(value, dict) or not all(isinstance(v, list) for v in value.values()):
            raise ConfigError(f'{name}: must be a JSON object like {{"dba": ["db.*"]}}')
        return {group: tuple(patterns) for group, patterns in value.items()}
    if field == "plugin_config":
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{name}: not valid JSON ({exc.msg})") from None
        if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
            raise ConfigError(
                f'{name}: must be a JSON object like {{"DataProcessor": {{"max_size": 1024}}}}'
            )
        return value
    if kind == "Path":
        return Path(raw)
    if kind == "tuple[str, ...]":
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if kind == "bool":
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: {raw!r} is not a boolean (true or false)")
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{name}: {raw!r} is not an integer") from None
    if field == "log_level":
        return raw.upper()
    if field == "log_format":
        return raw.lower()
    if field == "public_url":
        return raw.rstrip("/")
    return raw


def log_level_number(config: Config) -> int:
    return logging.getLevelName(config.log_level)
