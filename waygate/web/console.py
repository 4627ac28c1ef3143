"""The web console (/console): server-rendered pages for the people in the loop.

An approver's inbox (new requests appear within a second or two, by short polling), the
executions with their events, keys (admins), the commands catalog and the service's status.
Every action goes through the same service call as its REST twin (the same permission checks,
the same audit rows and key events); this module only reads forms and renders pages.
Who is signed in, and what protects the forms: ``console_auth.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from marshmallow import ValidationError

from ..approvals.policy import may_approve
from ..clock import ClientTimeError, isoformat, parse_client_time, parse_iso, utcnow
from ..errors import InvalidRequest, NotFound, WaygateError
from ..keys import EVENTS, expiry, parse_duration
from ..outcomes import ExecutionStatus
from ..principals import owner_for, person_of
from ..schemas import DecisionSchema
from ..services import Services
from . import console_auth, services
from .auth import caller_of
from .console_auth import admin_page, approver_page, me, signed_in
from .core_api import check_health  # the /health view's own checks

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static" / "console"
bp = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static/console",
    static_url_path="/static",
)
# Scripts, styles, images and requests from the console's own origin only; no inline code,
# no frames, forms only to itself.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_SIZE = 50
ERROR_WINDOW = timedelta(minutes=15)
_decision = DecisionSchema()
# Sign-in and the static files need no session.
_OPEN_ENDPOINTS = {"console.login", "console.static"}


# -- every console request --------------------------------------------------------------------


@bp.before_request
def _guard():
    if request.endpoint == "console.static":
        return None
    if request.method == "POST":
        console_auth.check_form_post()
    if request.endpoint in _OPEN_ENDPOINTS or signed_in() is not None:
        return None
    if request.endpoint == "console.approval_items":  # a poll: the page reloads to sign in
        return Response("signed out", status=401, mimetype="text/plain")
    return redirect(url_for("console.login", next=_local_path()))


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    # The API's no-referrer would make the browser send "Origin: null" with the console's own
    # forms; same-origin tells the console its own origin and nothing to anyone else.
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint == "console.static":
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    return response


@bp.errorhandler(WaygateError)
def _refused(exc: WaygateError):
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
    if exc.status >= 500:
        log.error("%s: %s", exc.code, exc.message, extra={"error_code": exc.code})
    return (
        render_template("console/error.html", title="Refused", status=exc.status, error=exc),
        exc.status,
        headers,
    )


@bp.app_template_global()
def static_url(filename: str) -> str:
    """A static file's URL with its content's hash: cached for a year, changed when it does."""
    return url_for("console.static", filename=filename, v=_version(filename))


@lru_cache(maxsize=32)
def _version(filename: str) -> str:
    return hashlib.sha256((STATIC / filename).read_bytes()).hexdigest()[:12]


@bp.context_processor
def _context() -> dict[str, Any]:
    return {
        "me": signed_in(),
        "may_approve": may_approve,
        "pretty": pretty,
        "left": time_left,
        "requester": requester,
    }


def pretty(value: Any) -> str:
    """JSON as people read it: indented, keys sorted, non-ASCII as is."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def time_left(until: str | None) -> str:
    if not until:
        return ""
    seconds = int((parse_iso(until) - utcnow()).total_seconds())
    if seconds <= 0:
        return "expired"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds:02d} s left" if minutes else f"{seconds} s left"


def requester(execution: Any) -> dict[str, str | None]:
    """Who asked, as key and person: the key's name (None for a person with a token) and
    the person (a token's holder, or the key's owner; None for a key nobody owns)."""
    person = person_of(execution.principal) if execution.principal else None
    if execution.key_id is None:  # a person with a token: key_name is their display name
        return {"key": None, "person": execution.key_name or (person and person.label)}
    if person is None:
        return {"key": execution.key_name, "person": None}
    owner = services().keys.owner_name(execution.key_id)
    return {"key": execution.key_name, "person": owner or person.label}


def _local_path() -> str:
    """This request's path and query, for coming back after signing in."""
    return request.full_path.rstrip("?")


def _safe_next(target: str | None) -> str:
    """Only a console path of this site: never an open redirect."""
    if target and target.startswith(request.script_root + "/console") and "//" not in target:
        return target
    return url_for("console.index")


# -- signing in and out -----------------------------------------------------------------------


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        if signed_in() is not None:
            return redirect(_safe_next(request.args.get("next")))
        return render_template("console/login.html", title="Sign in", **_providers())
    presented = request.form.get("api_key", "").strip()
    limiter = current_app.extensions["waygate.limiter"]
    try:
        key = services().keys.authenticate(presented) if presented else None
    except WaygateError:
        key = None
    limiter.check_presented_key(failed=key is None)  # 429 once the address's budget is spent
    if key is None:
        return render_template(
            "console/login.html",
            title="Sign in",
            **_providers(request.form.get("next")),
            problem="That API key was not accepted: it is wrong, revoked or expired.",
        ), 401
    console_auth.sign_in(key)
    log.info("console: key %s signed in", key.name)
    return redirect(_safe_next(request.form.get("next")), code=303)


def _providers(target: str | None = None) -> dict[str, Any]:
    """The sign-in page's choices: an API key, and with OIDC configured the identity
    provider (issue 27's code flow, ``/auth/login``, back to where the browser was going)."""
    target = target if target is not None else request.args.get("next")
    svc = services()
    if svc.signin is None:
        return {"next": target, "provider": None}
    config = svc.config
    name = config.oidc_provider_name or urlsplit(config.oauth_issuer).hostname or "single sign-on"
    start = url_for("signin.login", next=_safe_next(target))
    return {"next": target, "provider": {"name": name, "url": start}}


@bp.post("/logout")
def logout():
    principal = signed_in()
    response = redirect(url_for("console.login"), code=303)
    console_auth.sign_out(response)
    if principal is not None:
        log.info("console: %s signed out", principal.name)
    flash("Signed out.")
    return response


@bp.get("/")
def index():
    if may_approve(me()):
        return redirect(url_for("console.approvals"))
    return redirect(url_for("console.executions"))


# -- approvals --------------------------------------------------------------------------------


@bp.get("/approvals")
@approver_page
def approvals():
    return render_template("console/approvals.html", title="Approvals", **_inbox())


@bp.get("/approvals/items")
@approver_page
def approval_items():
    """The inbox's items alone: what the page polls for."""
    return render_template("console/_inbox.html", **_inbox())


def _inbox() -> dict[str, Any]:
    svc = services()
    approver = me()
    awaiting = svc.approvals.awaiting(limit=100)
    decider = svc.approvals
    return {
        "awaiting": [
            {
                "execution": execution,
                "annotations": _annotations(execution.action),
                "refusal": decider.refusal(approver, execution) if decider else "",
            }
            for execution in awaiting
        ],
        "decided": decider.recently_decided(limit=10),
    }


def _annotations(action: str) -> dict[str, Any]:
    command = services().plugins.current.commands.get(action)
    return dict(command.annotations) if command is not None else {}


@bp.post("/executions/<command_id>/approve")
def approve(command_id: str):
    return _decide(command_id, approve=True)


@bp.post("/executions/<command_id>/deny")
def deny(command_id: str):
    return _decide(command_id, approve=False)


def _decide(command_id: str, *, approve: bool):
    """The REST twin's service call (``POST /mcp/executions/<id>/approve|deny``): the same
    checks, events and webhook; a refusal is shown, not raised."""
    commands = services().commands
    try:
        reason = _decision.load({"reason": request.form.get("reason", "").strip() or None})
        decide = commands.approve if approve else commands.deny
        outcome = decide(command_id, me(), reason["reason"])
    except ValidationError as err:
        flash(f"Not decided: the reason is too long ({err.messages})", "error")
    except WaygateError as err:
        flash(f"Not decided: {err.message}", "error")
    else:
        verb = "Approved" if approve else "Denied"
        flash(f"{verb} {command_id}: it is {outcome.status.replace('_', ' ')} now.")
    if request.form.get("back") == "inbox":
        return redirect(url_for("console.approvals"), code=303)
    return redirect(url_for("console.execution", command_id=command_id), code=303)


# -- executions -------------------------------------------------------------------------------


@bp.get("/executions")
def executions():
    principal = me()
    args = request.args
    status = args.get("status") or None
    if status is not None and status not in ExecutionStatus.__members__.values():
        raise InvalidRequest(f"status must be one of {', '.join(ExecutionStatus)}")
    filters = {
        "action": args.get("command") or None,
        "status": status,
        "since": _moment(args.get("since"), "since"),
        "until": _moment(args.get("until"), "until"),
    }
    if may_approve(principal):  # as on GET /mcp/executions/<id>: an approver sees every one
        filters["key_name"] = args.get("key") or None
        filters["principal"] = args.get("principal") or None
    elif principal.key_id is not None:  # a user key sees its own executions
        filters["key_id"] = principal.key_id
    else:  # a person with no key: their own
        filters["principal"] = principal.id
    rows, cursor = services().audit.page(
        **filters, before=args.get("before") or None, limit=PAGE_SIZE
    )
    query = {k: v for k, v in args.items() if k != "before" and v}
    return render_template(
        "console/executions.html",
        title="Executions",
        rows=rows,
        statuses=list(ExecutionStatus),
        query=query,
        next_url=url_for("console.executions", **query, before=cursor) if cursor else None,
    )


def _moment(raw: str | None, name: str) -> str | None:
    """A form's date and time (``datetime-local``, taken as UTC) or ISO 8601, as stored."""
    if not raw:
        return None
    try:
        return isoformat(parse_client_time(raw))  # the one parser of client date-times
    except ClientTimeError as err:
        raise InvalidRequest(f"{name}: {err} (e.g. 2026-12-07T09:30)") from None


@bp.get("/executions/<command_id>")
def execution(command_id: str):
    principal = me()
    svc = services()
    caller = None if may_approve(principal) else caller_of(principal)
    # the REST twin's lookup (a user key sees only its own; open ones swept, due ones expired)
    if svc.status.lookup(command_id, caller) is None:
        raise NotFound(f"no execution {command_id!r}")
    record = svc.audit.get(command_id)
    if record is None:
        raise NotFound(f"no execution {command_id!r}")
    decider = svc.approvals
    template = svc.config.trace_url_template
    return render_template(
        "console/execution.html",
        title=f"Execution {command_id}",
        execution=record,
        annotations=_annotations(record.action),
        timeline=_timeline(record, decider.trail(command_id))
        if decider and may_approve(principal)
        else None,
        refusal=decider.refusal(principal, record) if decider else "",
        trace_url=template.replace("{trace_id}", record.trace_id)
        if template and record.trace_id
        else None,
    )


def _timeline(record: Any, events: list[Any]) -> list[dict[str, Any]]:
    """The approval events with the run's start and end, in time order."""
    steps = [
        {"at": ev.at, "step": ev.event, "by": ev.key_name, "reason": ev.reason} for ev in events
    ]
    if record.started_at:
        steps.append({"at": record.started_at, "step": "started", "by": None, "reason": None})
    if record.finished_at and not any(ev.event == "executed" for ev in events):
        steps.append(
            {"at": record.finished_at, "step": "finished", "by": None, "reason": record.status}
        )
    return sorted(steps, key=lambda step: step["at"])


# -- keys (admins) ----------------------------------------------------------------------------


@bp.get("/keys")
@admin_page
def keys():
    return _keys_page()


def _keys_page(secret: dict[str, str] | None = None, status: int = 200):
    listed = services().keys.list(include_revoked=True)
    return render_template(
        "console/keys.html",
        title="Keys",
        keys=listed,
        secret=secret,
    ), status


@bp.post("/keys")
@admin_page
def create_key():
    form = request.form
    principal = me()
    owner, owner_name = owner_for(principal)  # as POST /keys: a person's new key is theirs
    try:
        record, secret = services().keys.create(
            form.get("name", "").strip(),
            form.get("role", "user"),
            allow=_patterns(form.get("allow")),
            read_only=form.get("read_only") == "on",
            expires_at=_expires(form.get("expires_in")),
            actor=principal.actor,
            owner=owner,
            owner_name=owner_name,
        )
    except WaygateError as err:
        flash(f"Not created: {err.message}", "error")
        return _keys_page(status=err.status)
    log.info("console: key %s created by %s", record.name, me().name)
    return _keys_page({"name": record.name, "key": secret, "action": "created"}, 201)


@bp.get("/keys/<name>")
@admin_page
def key(name: str):
    record = services().keys.get(name)
    return render_template("console/key.html", title=f"Key {name}", key=record)


@bp.post("/keys/<name>/scope")
@admin_page
def change_key(name: str):
    form = request.form
    changes: dict[str, Any] = {
        "allow": _patterns(form.get("allow")),
        "read_only": form.get("read_only") == "on",
    }
    if form.get("expires_in", "").strip():
        changes["expires_at"] = _expires(form.get("expires_in"))
    try:
        services().keys.update(name, changes, actor=me().actor)
    except WaygateError as err:
        flash(f"Not changed: {err.message}", "error")
    else:
        flash(f"Key {name} changed.")
    return redirect(url_for("console.key", name=name), code=303)


@bp.post("/keys/<name>/rotate")
@admin_page
def rotate_key(name: str):
    try:
        grace = int(request.form.get("grace_seconds") or 0)
    except ValueError:
        grace = -1  # the service says what it accepts
    try:
        record, secret = services().keys.rotate(name, grace, actor=me().actor)
    except WaygateError as err:
        flash(f"Not rotated: {err.message}", "error")
        return redirect(url_for("console.keys"), code=303)
    return _keys_page({"name": record.name, "key": secret, "action": "rotated"})


@bp.post("/keys/<name>/revoke")
@admin_page
def revoke_key(name: str):
    try:
        services().keys.revoke(name, actor=me().actor)
    except WaygateError as err:
        flash(f"Not revoked: {err.message}", "error")
    else:
        flash(f"Key {name} revoked: every worker refuses it from its next request.")
    return redirect(url_for("console.keys"), code=303)


def _patterns(raw: str | None) -> list[str] | None:
    """An allow-list from a text field (commas or spaces between patterns); empty: every
    command."""
    patterns = [p for p in (raw or "").replace(",", " ").split() if p]
    return patterns or None


def _expires(raw: str | None) -> str | None:
    text = (raw or "").strip()
    return expiry(parse_duration(text)) if text else None


@bp.get("/key-events")
@admin_page
def key_events():
    event = request.args.get("event") or None
    if event is not None and event not in EVENTS:
        raise InvalidRequest(f"event must be one of {', '.join(EVENTS)}")
    try:
        page = max(1, int(request.args.get("page") or 1))
    except ValueError:
        page = 1
    events, total = services().keys.events(
        key_name=request.args.get("key") or None,
        event=event,
        offset=(page - 1) * PAGE_SIZE,
        limit=PAGE_SIZE,
    )
    query = {k: v for k, v in request.args.items() if k != "page" and v}
    return render_template(
        "console/key_events.html",
        title="Key events",
        events=events,
        kinds=EVENTS,
        query=query,
        page=page,
        next_url=url_for("console.key_events", **query, page=page + 1)
        if page * PAGE_SIZE < total
        else None,
    )


# -- commands and status ----------------------------------------------------------------------


@bp.get("/commands")
def commands():
    catalog = services().status.catalog(caller_of(me()))
    for entry in catalog:
        entry["annotations"] = _annotations(entry["name"])
    return render_template("console/commands.html", title="Commands", catalog=catalog)


@bp.get("/status")
@admin_page
def status():
    svc = services()
    since = isoformat(utcnow() - ERROR_WINDOW)
    recent = svc.audit.count_since(since)
    failed = svc.audit.count_since(since, (ExecutionStatus.FAILED, ExecutionStatus.TIMEOUT))
    plugins = svc.plugins.current
    return render_template(
        "console/status.html",
        title="Status",
        health=check_health(),
        pool=svc.commands.pool.stats().as_dict(),
        admission=svc.commands.admission.limit,
        awaiting=svc.approvals.count_awaiting(),
        recent=recent,
        failed=failed,
        error_rate=(failed / recent) if recent else 0.0,
        window_minutes=int(ERROR_WINDOW.total_seconds() // 60),
        plugins_loaded=sorted(plugins.loaded),
        plugins_failed=plugins.failed,
    )


def init_app(app: Flask, svc: Services) -> None:
    console_auth.init_app(app, svc)
    app.register_blueprint(bp)
