"""The ``waygate`` command: serving, migrations, backups and API keys.

waygate [--env-file PATH] ...    (default /etc/waygate/waygate.env when present)
waygate --version
waygate serve [GUNICORN OPTIONS]                    (gunicorn with the packaged settings)
waygate migrate
waygate backup PATH                                 (an online copy of the database)
waygate db copy --to postgresql://...               (this host's SQLite state into PostgreSQL)
waygate keys create --name NAME [--role admin|user] [--allow PATTERN ...] [--read-only]
                    [--expires 30d] [--rate-limit 1000/minute]   (the key: last line of stdout)
waygate keys list [--json]                          (role, scope, expiry, last use, state)
waygate keys update NAME [--allow PATTERN ... | --allow-all] [--read-only/--not-read-only]
                    [--expires 30d | --no-expiry] [--rate-limit N/period | --default-rate-limit]
waygate keys rotate NAME [--grace 1h]                (the new key: last line of stdout)
waygate keys events [--key NAME]
waygate keys revoke NAME [--force]                  (--force: even the last live admin key)
waygate keys bootstrap                              (first admin key, only if none exist)
waygate mcp stdio [--as NAME]                       (MCP over stdio, for desktop clients)
waygate approvals list
waygate approvals approve ID --as NAME [--reason R]  (decided and audited as admin key NAME;
                                                     exit 0 ran and succeeded, 1 refused,
                                                     3 approved but the command failed)
waygate approvals deny ID --as NAME [--reason R]
waygate audit verify [--trust KEY ...] [--json]     (exit 0 intact, 1 broken: what and where)
waygate audit export [--since T] [--until T] [--format jsonl] [-o FILE]
waygate audit public-key                            (the checkpoint signing key, for --trust)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from dotenv import dotenv_values

from . import __version__
from .clock import utcnow
from .config import Config, ConfigError
from .errors import WaygateError
from .keys import expiry, parse_duration
from .keystore import KeyStore
from .storage import DatabaseError, PostgresStorage, Storage, Unsupported, open_storage

# The environment file of the systemd unit (deploy/systemd/waygate.service): the CLI reads it
# too, so that it finds the service's data dir and settings.
DEFAULT_ENV_FILE = Path("/etc/waygate/waygate.env")


class NoDatabase(click.ClickException):
    """A command that works on existing state found no database to work on."""


class Context:
    def __init__(self) -> None:
        self._storage: Storage | None = None
        self._services = None
        self.config = Config.from_env()

    @property
    def storage(self) -> Storage:
        """The existing database; refuses instead of creating an empty one somewhere else."""
        if self._storage is None:
            path = self.config.database_path
            if not self.config.database_url and not path.is_file():
                raise NoDatabase(
                    f"no database at {path.resolve()}: set WAYGATE_DATA_DIR (or pass "
                    "--env-file) to the service's data dir, or create one with `waygate migrate`"
                )
            self._storage = open_storage(self.config)
            self._storage.migrate()
        return self._storage

    @property
    def keys(self) -> KeyStore:
        return KeyStore(self.storage)

    @property
    def services(self):
        """The full service set (plugins, pool, audit) for commands that run executions."""
        from .services import Services

        if self._services is None:
            share_metrics(self.config)
            self._services = Services.build(self.config)
        return self._services


def share_metrics(config: Config) -> None:
    """Work this process does (an approved command it runs, MCP over stdio) is counted in the
    service's /metrics, as it is in the audit; a warning on stderr when it cannot be."""
    from .metrics import share_service_metrics

    problem = share_service_metrics(config.data_dir / "prometheus")
    if problem:
        click.echo(f"waygate: warning: not counted in the service's metrics: {problem}", err=True)


def load_env_file(path: Path | None) -> None:
    """Put the file's ``KEY=value`` lines into the environment; variables already set win.

    ``path`` None means the default file, read only when it exists."""
    if path is None:
        if not DEFAULT_ENV_FILE.exists():
            return
        path = DEFAULT_ENV_FILE
    try:
        values = dotenv_values(path)
    except OSError as exc:
        raise click.ClickException(
            f"cannot read the environment file {path}: {exc.strerror} "
            "(run as the service's user, or pass --env-file)"
        ) from None
    for name, value in values.items():
        if value is not None:
            os.environ.setdefault(name, value)
    # the service reads WAYGATE_PLUGIN_CONFIG from it again when plugins are reloaded
    os.environ.setdefault("WAYGATE_ENV_FILE", str(path.resolve()))


pass_context = click.make_pass_decorator(Context)


@click.group()
@click.version_option(__version__, prog_name="waygate", message="%(prog)s %(version)s")
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"WAYGATE_* settings to read (default: {DEFAULT_ENV_FILE} when present); "
    "variables already in the environment win.",
)
@click.pass_context
def cli(ctx: click.Context, env_file: Path | None) -> None:
    """Waygate MCP server administration."""
    if env_file is not None and not env_file.is_file():
        raise click.BadParameter(f"{env_file} is not a file", param_hint="--env-file")
    load_env_file(env_file)
    ctx.obj = Context()


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("gunicorn_args", nargs=-1, type=click.UNPROCESSED)
def serve(gunicorn_args: tuple[str, ...]) -> None:
    """Run the service: gunicorn with Waygate's packaged settings and app, in this process.

    Any gunicorn option may follow (e.g. --bind 0.0.0.0:9000 --workers 4); the master
    migrates the database before it starts the workers."""
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:waygate.gunicorn_conf",
        *gunicorn_args,
        "waygate.wsgi:app",
    ]
    sys.stdout.flush()
    sys.stderr.flush()
    # exec: gunicorn's master takes this process's pid, so systemd and signals reach it
    os.execv(sys.executable, argv)  # noqa: S606 - our own interpreter, no shell


@cli.command()
@pass_context
def migrate(ctx: Context) -> None:
    """Apply pending database migrations."""
    storage = open_storage(ctx.config)
    applied = storage.migrate()
    click.echo(
        f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else "")
    )


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@pass_context
def backup(ctx: Context, path: Path) -> None:
    """Copy the database to PATH while the service runs (SQLite's online backup).

    The copy is readable by its owner only (0600), like the database itself. To restore, stop
    the service and put the copy in place of <data dir>/waygate.db."""
    if path.exists():
        raise click.ClickException(f"{path} exists already; give a new file name")
    if not path.parent.is_dir():
        raise click.ClickException(
            f"the directory {path.parent} does not exist: create it first (e.g. install -d -m"
            f" 0700 {path.parent}) or give a path in an existing directory"
        )
    try:
        ctx.storage.backup_to(path)
    except Unsupported as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"backed up {ctx.storage.describe()} to {path}")


@cli.group()
def db() -> None:
    """Move state between databases."""


@db.command("copy")
@click.option(
    "--to",
    "target_url",
    required=True,
    metavar="postgresql://user:password@host:port/db",
    help="The PostgreSQL database every host will share.",
)
@pass_context
def db_copy(ctx: Context, target_url: str) -> None:
    """Copy this host's SQLite state (keys, executions, statistics, errors) into PostgreSQL.

    Run it again after stopping the service: rows already there take the source's values, so
    what came in or changed meanwhile (a key revoked, an answer stored) is copied. Each table is
    verified by counting its rows in the target. Then set WAYGATE_DATABASE_URL on every host
    (docs/operations.md, "Several hosts")."""
    from .config import ConfigError, check_database_url
    from .dbcopy import copy_state

    if ctx.config.database_url:
        raise click.ClickException(
            "WAYGATE_DATABASE_URL is set: this host is on PostgreSQL already; unset it to copy"
            " the SQLite state of its data dir"
        )
    try:
        check_database_url(target_url, name="--to")
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    source = ctx.storage
    target = PostgresStorage(
        target_url,
        pool_size=2,
        connect_timeout_s=ctx.config.db_connect_timeout_s,
        statement_timeout_ms=ctx.config.db_statement_timeout_ms,
    )
    try:
        applied = target.migrate()
        if applied:
            click.echo(f"migrated {target.describe()}: {len(applied)} migration(s)")
        reports = copy_state(source, target)
    finally:
        target.close()
    for r in reports:
        click.echo(
            f"{r.table}: {r.source} in {source.describe()}, {r.copied} copied,"
            f" {r.source - r.copied} already there; {r.verified} verified in the target"
        )
    if not all(r.ok for r in reports):
        raise click.ClickException(
            "some rows are not in the target: a row there holds the same unique value (e.g. a"
            " live key of the same name); resolve it and run the copy again"
        )
    click.echo(f"copied into {target.describe()}: every row verified")


@cli.group()
def keys() -> None:
    """Manage API keys (stored only as hashes)."""


@keys.command("create")
@click.option("--name", required=True, help="A unique name for the key's holder.")
@click.option("--role", type=click.Choice(["admin", "user"]), default="user", show_default=True)
@click.option("--allow", multiple=True, help="A command pattern the key may run (repeatable).")
@click.option("--read-only", is_flag=True, help="Only commands annotated readOnlyHint.")
@click.option("--expires", help="Lifetime, e.g. 30d, 12h, 15m or seconds.")
@click.option("--rate-limit", help="The key's own execute limit, e.g. 1000/minute.")
@click.option("--owner", help="The person who holds it: <issuer URL>#<subject>.")
@click.option("--owner-name", help="The owner's display name.")
@pass_context
def keys_create(
    ctx: Context,
    name: str,
    role: str,
    allow: tuple[str, ...],
    read_only: bool,
    expires: str | None,
    rate_limit: str | None,
    owner: str | None,
    owner_name: str | None,
) -> None:
    """Create a key. It is shown once, on the last line; store it now."""
    record, key = ctx.keys.create(
        name,
        role,
        allow=list(allow) or None,
        read_only=read_only,
        expires_at=expiry(parse_duration(expires)) if expires else None,
        rate_limit=rate_limit,
        owner=owner,
        owner_name=owner_name,
    )
    click.echo(f"created {record.role} key {record.name!r}; it is shown only once:")
    click.echo(key)


@keys.command("update")
@click.argument("name")
@click.option("--allow", multiple=True, help="Replace the allow-list (repeatable).")
@click.option("--allow-all", is_flag=True, help="Drop the allow-list: every command.")
@click.option("--read-only/--not-read-only", default=None)
@click.option("--expires", help="New lifetime from now, e.g. 30d.")
@click.option("--no-expiry", is_flag=True)
@click.option("--rate-limit", help="The key's own execute limit, e.g. 1000/minute.")
@click.option("--default-rate-limit", is_flag=True, help="Back to the default execute limit.")
@click.option("--owner", help="The person who holds it: <issuer URL>#<subject>.")
@click.option("--owner-name", help="The owner's display name.")
@click.option("--no-owner", is_flag=True, help="The key belongs to no person.")
@click.option(
    "--force",
    is_flag=True,
    help="Set an expiry even on the last live admin key (refused otherwise).",
)
@pass_context
def keys_update(
    ctx: Context,
    name: str,
    allow: tuple[str, ...],
    allow_all: bool,
    read_only: bool | None,
    expires: str | None,
    no_expiry: bool,
    rate_limit: str | None,
    default_rate_limit: bool,
    owner: str | None,
    owner_name: str | None,
    no_owner: bool,
    force: bool,
) -> None:
    """Change a key's scope, expiry, rate limit or owner."""
    changes: dict = {}
    if allow or allow_all:
        changes["allow"] = None if allow_all else list(allow)
    if read_only is not None:
        changes["read_only"] = read_only
    if expires or no_expiry:
        changes["expires_in"] = None if no_expiry else parse_duration(expires or "")
    if rate_limit or default_rate_limit:
        changes["rate_limit"] = None if default_rate_limit else rate_limit
    if owner or no_owner:
        changes["owner"], changes["owner_name"] = (None, None) if no_owner else (owner, owner_name)
    record = ctx.keys.update(name, changes, force=force)
    click.echo(json.dumps(record.as_dict(), indent=2))


@keys.command("rotate")
@click.argument("name")
@click.option("--grace", default="0", show_default=True, help="How long the old key still works.")
@pass_context
def keys_rotate(ctx: Context, name: str, grace: str) -> None:
    """A new secret for the key, shown once on the last line."""
    record, key = ctx.keys.rotate(name, parse_duration(grace))
    click.echo(f"rotated key {record.name!r}; the new key is shown only once:")
    click.echo(key)


@keys.command("events")
@click.option("--key", "key_name", help="Only this key's events.")
@click.option("--limit", default=50, show_default=True)
@pass_context
def keys_events(ctx: Context, key_name: str | None, limit: int) -> None:
    """The trail of key events, newest first (JSON lines)."""
    events, _ = ctx.keys.events(key_name=key_name, limit=limit)
    for event in events:
        click.echo(json.dumps(event))


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
@pass_context
def keys_list(ctx: Context, as_json: bool) -> None:
    """List keys: role, allow-list, read-only, expiry, last use and state (live, expired or
    revoked); never the keys."""
    records = ctx.keys.list()
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in records], indent=2))  # as GET /keys
        return
    click.echo(
        f"{'NAME':24} {'ROLE':6} {'ALLOW':24} {'READ-ONLY':9} {'EXPIRES':24} {'LAST USED':24} STATE"
    )
    now = utcnow()
    for r in records:
        allow = "(all)" if r.allow is None or r.is_admin else ",".join(r.allow) or "(none)"
        read_only = "yes" if r.read_only and not r.is_admin else "no"
        click.echo(
            f"{r.name:24} {r.role:6} {allow:24} {read_only:9} "
            f"{r.expires_at or 'never':24} {r.last_used_at or 'never':24} {r.state(now)}"
        )


@keys.command("revoke")
@click.argument("name")
@click.option(
    "--force",
    is_flag=True,
    help="Revoke even the last live admin key (then only this CLI can make a new one).",
)
@pass_context
def keys_revoke(ctx: Context, name: str, force: bool) -> None:
    """Revoke a key; every worker refuses it from its next request. Its requests still
    awaiting approval are denied with it."""
    record = ctx.keys.revoke(name, force=force)
    click.echo(f"revoked key {record.name!r}")


@keys.command("bootstrap")
@click.option("--name", default="dev-admin", show_default=True)
@pass_context
def keys_bootstrap(ctx: Context, name: str) -> None:
    """Create a first admin key if there are no live keys yet (used by `make serve`)."""
    if ctx.keys.count_live():
        click.echo("API keys exist already; list them with `waygate keys list`.")
        return
    record, key = ctx.keys.create(name, "admin")
    click.echo(f"No API keys existed: created development admin key {record.name!r}.")
    click.echo("It is shown only this once; export it, e.g. export WAYGATE_KEY=<key>:")
    click.echo(key)


@cli.group()
def mcp() -> None:
    """Serve the plugin commands as MCP tools."""


@mcp.command("stdio")
@click.option(
    "--as",
    "caller",
    default="stdio",
    show_default=True,
    help="The name executions are audited under.",
)
@click.option("--allow", multiple=True, help="Offer only commands matching (repeatable).")
@click.option("--read-only", is_flag=True, help="Offer only commands annotated readOnlyHint.")
@pass_context
def mcp_stdio(ctx: Context, caller: str, allow: tuple[str, ...], read_only: bool) -> None:
    """MCP over stdin/stdout (newline-delimited JSON-RPC) for desktop clients. Local trust:
    no API key is asked for, but --allow/--read-only scope the tools as a key's scope would.
    Logs go to stderr."""
    from .commands import Caller
    from .keys import Scope, check_patterns
    from .logs import configure_logging
    from .mcp.stdio import serve
    from .services import Services

    scope = Scope(check_patterns(list(allow)) if allow else None, read_only)
    configure_logging(ctx.config)
    share_metrics(ctx.config)
    services = Services.build(ctx.config)
    services.housekeeper.start()
    # the --as name is who acts: it owns the executions and tasks it starts (and sees them)
    serve(services.mcp, Caller(key_name=caller, scope=scope, principal=f"stdio:{caller}"))


@cli.group()
def approvals() -> None:
    """Executions awaiting approval: list, approve, deny. A decision is made and audited as
    the admin key named by --as (never the key that requested it), through the same service
    as POST /mcp/executions/{id}/approve|deny."""


@approvals.command("list")
@pass_context
def approvals_list(ctx: Context) -> None:
    """List executions awaiting approval, newest first, with their stored params."""
    import json

    awaiting = ctx.services.approvals.awaiting()
    click.echo(f"{'COMMAND ID':38} {'ACTION':20} {'REQUESTED BY':16} {'EXPIRES':25} PARAMS")
    for e in awaiting:
        params = json.dumps(e.params, sort_keys=True)
        click.echo(
            f"{e.command_id:38} {e.action:20} {e.key_name or '-':16} "
            f"{e.approval_expires_at:25} {params[:200]}"
        )


_as_option = click.option(
    "--as",
    "approver",
    required=True,
    help="The name of the live admin key this decision is made and audited as.",
)
_reason_option = click.option("--reason", default=None, help="Recorded with the decision.")


# Exit codes of `waygate approvals approve` (README, "Approvals"): 0 the approved command ran
# and succeeded; 1 the decision was refused (unknown id, not awaiting approval, not a live
# admin key, the requester's own key) and nothing ran; 3 approved, but the command failed,
# timed out or could not be run: its outcome is printed all the same.
EXIT_COMMAND_FAILED = 3


class CommandFailed(click.ClickException):
    exit_code = EXIT_COMMAND_FAILED


@approvals.command("approve")
@click.argument("command_id")
@_as_option
@_reason_option
@pass_context
def approvals_approve(ctx: Context, command_id: str, approver: str, reason: str | None) -> None:
    """Approve: the stored request runs here, in this process, and its outcome is printed.

    Exit status: 0 it ran and succeeded; 1 the decision was refused (nothing ran); 3 approved,
    but the command failed, timed out or could not be run."""
    import json

    from .outcomes import ExecutionStatus

    services = ctx.services
    services.commands.approve(command_id, ctx.keys.get(approver), reason)
    click.echo(f"approved {command_id} as {approver!r}; running it")
    outcome = _wait_for(services.status, command_id)
    click.echo(json.dumps(outcome.as_response(), default=str))
    if outcome.status != ExecutionStatus.SUCCESS:
        raise CommandFailed(f"approved {command_id}, but the command ended {outcome.status}")


@approvals.command("deny")
@click.argument("command_id")
@_as_option
@_reason_option
@pass_context
def approvals_deny(ctx: Context, command_id: str, approver: str, reason: str | None) -> None:
    """Deny: the execution ends denied and never runs."""
    ctx.services.commands.deny(command_id, ctx.keys.get(approver), reason)
    click.echo(f"denied {command_id} as {approver!r}")


def _wait_for(status, command_id: str):
    """The execution once it has ended (the pool thread of this process runs it)."""
    import time

    from .outcomes import ExecutionStatus

    while True:
        outcome = status.lookup(command_id)
        if outcome.status not in ExecutionStatus.open():
            return outcome
        time.sleep(0.05)


@cli.group()
def audit() -> None:
    """The tamper-evident audit: verify its hash chain, export it, show the signing key."""


def _chain(ctx: Context, trust: tuple[Path, ...] = ()):
    from .auditchain import AuditChain, Signer, load_public_key

    trusted = []
    for path in trust:
        try:
            trusted.append(load_public_key(path))
        except (OSError, ValueError) as exc:
            raise click.BadParameter(f"{path}: {exc}", param_hint="--trust") from None
    trusted += ctx.config.audit_trusted_keys
    return AuditChain(
        ctx.storage,
        Signer(ctx.config.audit_signing_key_path),
        checkpoint_entries=ctx.config.audit_checkpoint_entries,
        checkpoint_interval_s=ctx.config.audit_checkpoint_interval_s,
        trusted_keys=trusted,
    )


class AuditBroken(click.ClickException):
    """Exit 1 after the report (printed on stdout), with one line on stderr."""

    exit_code = 1


@audit.command("verify")
@click.option(
    "--trust",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Another public key whose checkpoints are trusted (PEM, or the base64 that"
    " `waygate audit public-key` prints); repeatable. This host's signing key always is.",
)
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
@pass_context
def audit_verify(ctx: Context, trust: tuple[Path, ...], as_json: bool) -> None:
    """Recompute the audit's hash chain from the oldest checkpoint kept and check every
    checkpoint's signature. Exit 0 and a one-line summary when intact; 1 and the problems
    found (the first broken execution by command id) when not."""
    report = _chain(ctx, trust).verify()
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        click.echo(report.summary())
        for problem in report.problems[1:]:
            click.echo(f"  {problem}")
    if not report.intact:
        raise AuditBroken(
            f"the audit failed verification: {report.problem_count} problem(s), above"
        )


def _moment(_ctx, param: click.Parameter, value: str | None) -> str | None:
    from .clock import ClientTimeError, isoformat, parse_client_time

    if value is None:
        return None
    try:
        return isoformat(parse_client_time(value))
    except ClientTimeError as exc:
        raise click.BadParameter(f"{value!r}: {exc}") from None


@audit.command("export")
@click.option("--since", callback=_moment, help="Executions created at or after (ISO 8601).")
@click.option("--until", callback=_moment, help="Executions created before (ISO 8601).")
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A file to write (default: stdout).",
)
@pass_context
def audit_export(
    ctx: Context, since: str | None, until: str | None, fmt: str, output: Path | None
) -> None:
    """One JSON object a line per execution, oldest first, with its events, principal,
    arguments hash and chain entry (never the arguments or the result themselves)."""
    chain = _chain(ctx)
    out = open(output, "w", encoding="utf-8") if output else sys.stdout  # noqa: SIM115
    try:
        for record in chain.export(since, until):
            out.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n")
    finally:
        if output:
            out.close()


@audit.command("public-key")
@pass_context
def audit_public_key(ctx: Context) -> None:
    """Print this host's checkpoint signing key's public half (base64), for --trust."""
    from .auditchain import Signer

    click.echo(Signer(ctx.config.audit_signing_key_path).public_key())


@cli.command()
@click.option(
    "--output",
    "-o",
    default="openapi.yaml",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Where to write it ('-' for stdout).",
)
def openapi(output: str) -> None:
    """Write the OpenAPI document generated from the code (built-in plugins only)."""
    import tempfile
    from pathlib import Path

    from .app import create_app
    from .config import Config
    from .web.openapi import build_spec, to_yaml

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(Config(data_dir=Path(tmp), housekeeping_interval_s=0))
        text = to_yaml(build_spec(app, app.extensions["waygate"].plugins.current.commands))
        app.extensions["waygate"].storage.close()
    if output == "-":
        click.echo(text, nl=False)
    else:
        Path(output).write_text(text)
        click.echo(f"wrote {output}")


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="waygate", standalone_mode=False)
    except ConfigError as exc:
        click.echo(f"waygate: configuration error: {exc}", err=True)
        return 2
    except WaygateError as exc:
        click.echo(f"waygate: {exc.message}", err=True)
        return 1
    except click.exceptions.Abort:
        return 1
    except click.UsageError as exc:
        exc.show()
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"waygate: {exc.format_message()}", err=True)
        return exc.exit_code
    except DatabaseError as exc:  # unreachable, refused, read-only: said in one line
        click.echo(f"waygate: database error: {str(exc).strip().splitlines()[0]}", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
