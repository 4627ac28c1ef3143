"""OAuth 2.1 resource server, as the MCP authorization specification (2025-06-18 and later)
asks: who a bearer access token belongs to, and what it may do.

- The authorization server is ``WAYGATE_OAUTH_ISSUER``; its metadata is found by RFC 8414
  (``/.well-known/oauth-authorization-server``) or OpenID discovery, and must name the same
  issuer.
- JWT access tokens are verified by PyJWT against the issuer's JWKS: an allow-list of
  asymmetric algorithms (the key's own algorithm must match the token's), ``iss``, ``aud``
  equal to this resource's audience (RFC 8707: a token minted for another resource is refused,
  never passed on), ``exp``/``nbf`` with a small leeway. Opaque tokens go to RFC 7662
  introspection when this resource server has credentials for it.
- The claims become a :class:`~waygate.principals.Principal`: a groups (or roles) claim maps
  to admin, approver and user, groups to command allow-lists, the token's scopes to run or
  read-only; the allow-list and read-only rule are the very :class:`~waygate.keys.Scope` a
  scoped key has.

Documents of the authorization server (metadata, keys) are a per-process cache: fetched on
first use, at most one fetch in flight per process, each bounded by ``oauth_timeout_s``;
an unknown key id fetches the keys again at most every ``oauth_jwks_refresh_s``. When the
server is down or slow, keys already fetched keep working and anything else is refused as an
invalid token (401), never a 500 or a hang.

Framework-free: ``waygate.web.oauth_api`` serves the protected-resource metadata and the
challenges.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import math
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

import jwt

from .config import Config
from .errors import Forbidden, Unauthorized
from .forksafe import reset_after_fork
from .keys import Scope
from .principals import Person, Principal

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_DOCUMENT_BYTES = 1024 * 1024
KEYS_MAX_AGE_S = 600.0  # known keys are looked at again this often (a removed key stops)
METADATA_MAX_AGE_S = 3600.0


class InvalidToken(Unauthorized):
    """A bearer token that failed verification: 401 with ``error="invalid_token"``."""

    oauth_error = "invalid_token"


class InsufficientScope(Forbidden):
    """A valid token whose scopes do not allow this: 403 with ``error="insufficient_scope"``."""

    oauth_error = "insufficient_scope"


class FetchError(Exception):
    """The authorization server did not answer usefully (down, slow, or nonsense)."""


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and len(token) <= 16384


class Remote(Generic[T]):
    """One document of the authorization server, cached in this process.

    ``get(usable)`` returns the cached value when ``usable(value)`` says so and it is younger
    than ``max_age_s``; otherwise it fetches once more, unless another thread of this process
    is fetching (then it waits at most ``timeout_s`` for that fetch and uses its result) or
    the last attempt was less than ``min_interval_s`` ago. A failed fetch keeps the old value.
    """

    def __init__(
        self,
        fetch: Callable[[], T],
        *,
        timeout_s: float,
        min_interval_s: float,
        max_age_s: float,
        what: str,
    ):
        self._fetch, self.what = fetch, what
        self.timeout_s, self.min_interval_s, self.max_age_s = timeout_s, min_interval_s, max_age_s
        self._forked()
        reset_after_fork(self, Remote._forked)

    def _forked(self) -> None:
        self._lock = threading.Lock()
        self._value: T | None = None
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self.fetches = 0  # attempts made by this process
        self._finished = 0  # attempts that ended, well or not

    def get(self, usable: Callable[[T], bool] = lambda _: True) -> T | None:
        value = self._value
        young = time.monotonic() - self._fetched_at < self.max_age_s
        if value is not None and young and usable(value):
            return value
        self._refresh()
        return self._value

    def _refresh(self) -> None:
        finished = self._finished
        if not self._lock.acquire(timeout=self.timeout_s):
            return  # another request's fetch did not finish in time: use what there is
        try:
            if self._finished != finished:
                return  # an attempt ended while this request waited: its result stands
            now = time.monotonic()
            if now - self._attempted_at < self.min_interval_s:
                return
            self._attempted_at = now
            self.fetches += 1
            try:
                self._value, self._fetched_at = self._fetch(), time.monotonic()
            except FetchError as exc:
                log.warning("oauth: %s not fetched: %s", self.what, exc)
            finally:
                self._finished += 1
        finally:
            self._lock.release()


def fetch_json(
    url: str, timeout_s: float, data: bytes | None = None, headers: Mapping[str, str] = {}
) -> dict[str, Any]:
    """A JSON object from the authorization server: no redirects, bounded in time and size."""
    request = urllib.request.Request(  # noqa: S310 - http(s) URLs checked by Config / metadata
        url, data=data, headers={"Accept": "application/json", **headers}
    )
    opener = urllib.request.build_opener(_NoRedirect())
    try:
        with opener.open(request, timeout=timeout_s) as response:
            body = response.read(MAX_DOCUMENT_BYTES + 1)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise FetchError(f"{url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise FetchError(f"{url}: {type(exc).__name__}") from None
    if len(body) > MAX_DOCUMENT_BYTES:
        raise FetchError(f"{url}: answer larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        value = json.loads(body)
    except ValueError:
        raise FetchError(f"{url}: not JSON") from None
    if not isinstance(value, dict):
        raise FetchError(f"{url}: not a JSON object")
    return value


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def metadata_urls(issuer: str) -> list[str]:
    """Where the issuer's metadata may be: RFC 8414's path-inserted URL, then OpenID's."""
    parts = urllib.parse.urlsplit(issuer)
    path = parts.path.rstrip("/")
    origin = f"{parts.scheme}://{parts.netloc}"
    return [
        f"{origin}/.well-known/oauth-authorization-server{path}",
        f"{issuer.rstrip('/')}/.well-known/openid-configuration",
    ]


def _http_url(value: Any) -> bool:
    return isinstance(value, str) and urllib.parse.urlsplit(value).scheme in ("https", "http")


def claim(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by its exact name (``https://example.com/roles``), else by a dotted path into
    nested objects (Keycloak's ``realm_access.roles``)."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _strings(value: Any) -> set[str]:
    """A claim of one string (space-separated words) or a list of strings, as a set."""
    if isinstance(value, str):
        return set(value.split())
    if isinstance(value, (list, tuple)):
        return {item for item in value if isinstance(item, str)}
    return set()


class ResourceServer:
    """Verifies access tokens for this resource and says who they belong to."""

    def __init__(self, config: Config):
        self.config = config
        self.issuer = config.oauth_issuer
        self.audience = config.effective_oauth_audience
        self.resource = config.oauth_resource
        self.algorithms = tuple(config.oauth_algorithms)
        timeout, interval = float(config.oauth_timeout_s), float(config.oauth_jwks_refresh_s)
        self.metadata = Remote(
            self._fetch_metadata,
            timeout_s=timeout,
            min_interval_s=interval,
            max_age_s=METADATA_MAX_AGE_S,
            what="authorization server metadata",
        )
        self.keys = Remote(
            self._fetch_keys,
            timeout_s=timeout,
            min_interval_s=interval,
            max_age_s=KEYS_MAX_AGE_S,
            what="JWKS",
        )

    # -- what this resource tells clients ---------------------------------------------------

    @property
    def introspects(self) -> bool:
        """Whether opaque tokens are introspected (this resource server has credentials)."""
        return bool(self.config.oauth_introspection_client_id)

    @property
    def scopes(self) -> tuple[str, str]:
        return (self.config.oauth_read_scope, self.config.oauth_run_scope)

    def protected_resource_metadata(self) -> dict[str, Any]:
        """RFC 9728's document for this resource."""
        return {
            "resource": self.resource,
            "authorization_servers": [self.issuer],
            "scopes_supported": list(self.scopes),
            "bearer_methods_supported": ["header"],
            "resource_name": "Waygate",
        }

    @property
    def metadata_url(self) -> str:
        return f"{self.config.public_url}/.well-known/oauth-protected-resource/mcp"

    def challenge(self, error: str | None = None, description: str | None = None) -> str:
        """The ``WWW-Authenticate`` value that starts a client's discovery (RFC 9728 §5.1)."""
        parts = [f'resource_metadata="{self.metadata_url}"', f'scope="{" ".join(self.scopes)}"']
        if error:
            parts.append(f'error="{error}"')
            if description:
                safe = description.replace("\\", "").replace('"', "'")[:200]
                parts.append(f'error_description="{safe}"')
        return "Bearer " + ", ".join(parts)

    # -- verification -----------------------------------------------------------------------

    def verify(self, token: str) -> Principal:
        """The principal an access token stands for; InvalidToken, InsufficientScope or
        Forbidden otherwise."""
        if looks_like_jwt(token):
            claims = self._jwt_claims(token)
        elif self.introspects:
            claims = self._introspected_claims(token)
        else:
            raise InvalidToken("not a JWT access token, and no introspection is configured")
        return self.principal(claims)

    def id_token_claims(self, token: str, client_id: str, nonce: str) -> dict[str, Any]:
        """The claims of an OpenID Connect ID token issued to ``client_id`` for the sign-in
        that sent ``nonce``: verified exactly as an access token, with the client as its
        audience (and ``azp``, when present)."""
        claims = self._jwt_claims(token, audience=client_id, required=("exp", "iat", "sub"))
        if not isinstance(claims.get("nonce"), str) or not hmac.compare_digest(
            claims["nonce"], nonce
        ):
            raise InvalidToken("the ID token does not answer this sign-in (nonce)")
        if claims.get("azp", client_id) != client_id:
            raise InvalidToken("the ID token was issued to another client (azp)")
        return claims

    def _jwt_claims(
        self,
        token: str,
        audience: str | None = None,
        required: tuple[str, ...] = ("exp", "iss", "aud", "sub"),
    ) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed access token") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise InvalidToken(f"signature algorithm {str(alg)[:20]!r} is not accepted")
        kid = header.get("kid")
        key = self._signing_key(kid if isinstance(kid, str) else None)
        try:
            return jwt.decode(
                token,
                key,
                algorithms=list(self.algorithms),
                audience=audience or self.audience,
                issuer=self.issuer,
                leeway=self.config.oauth_leeway_s,
                options={"require": ["iss", "aud", *required]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("access token expired") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("access token is for another resource (aud)") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("access token is from another issuer (iss)") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("access token is not valid yet (nbf)") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("access token signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"access token refused: {type(exc).__name__}") from None

    def _signing_key(self, kid: str | None) -> jwt.PyJWK:
        def has(keys: list[jwt.PyJWK]) -> bool:
            return _find_key(keys, kid) is not None

        keys = self.keys.get(has)
        key = _find_key(keys or [], kid)
        if key is None:
            raise InvalidToken(
                "the token's signing key is not one of the issuer's (or its keys could not be"
                " fetched)"
            )
        return key

    def _introspected_claims(self, token: str) -> dict[str, Any]:
        endpoint = self.endpoint("introspection_endpoint")
        config = self.config
        secret = f"{_form(config.oauth_introspection_client_id)}:"
        secret += _form(config.oauth_introspection_client_secret)
        try:
            answer = fetch_json(
                endpoint,
                config.oauth_timeout_s,
                data=urllib.parse.urlencode(
                    {"token": token, "token_type_hint": "access_token"}
                ).encode(),
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Authorization": "Basic " + base64.b64encode(secret.encode()).decode(),
                },
            )
        except FetchError as exc:
            log.warning("oauth: introspection failed: %s", exc)
            raise InvalidToken("the token could not be introspected in time") from None
        if answer.get("active") is not True:
            raise InvalidToken("access token is not active")
        if answer.get("iss", self.issuer) != self.issuer:
            raise InvalidToken("access token is from another issuer (iss)")
        if self.audience not in _strings(answer.get("aud")):
            raise InvalidToken("access token is for another resource (aud)")
        exp = answer.get("exp")
        if isinstance(exp, (int, float)) and exp + config.oauth_leeway_s < time.time():
            raise InvalidToken("access token expired")
        if not isinstance(answer.get("sub"), str):
            raise InvalidToken("the introspected token names no subject (sub)")
        return answer

    def endpoint(self, name: str) -> str:
        metadata = self.metadata.get()
        url = metadata.get(name) if metadata else None
        if not _http_url(url):
            raise InvalidToken(f"the authorization server's {name} is not known (yet)")
        return url

    # -- claims to permissions ----------------------------------------------------------------

    def principal(self, claims: Mapping[str, Any]) -> Principal:
        config = self.config
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise InvalidToken("the token names no subject (sub)")
        groups = _strings(claim(claims, config.oauth_groups_claim))
        admin = bool(groups & set(config.oauth_admin_groups))
        approver = bool(groups & set(config.oauth_approver_groups))
        members = set(config.oauth_user_groups)
        person = _person(self.issuer, subject, claims)
        if members and not admin and not approver and not groups & members:
            raise Forbidden(
                f"{person.label} is not in a group allowed to use Waygate",
                {"groups_claim": config.oauth_groups_claim},
            )
        scopes = _strings(claims.get("scope")) | _strings(claims.get("scp"))
        if config.oauth_run_scope in scopes:
            read_only = False
        elif config.oauth_read_scope in scopes:
            read_only, admin, approver = True, False, False
        else:
            raise InsufficientScope(
                f"the token has neither the {config.oauth_run_scope} nor the"
                f" {config.oauth_read_scope} scope",
                {"scopes_needed": list(self.scopes)},
            )
        allow = None if admin else _allow_list(groups, config.oauth_group_allow)
        return Principal(
            role="admin" if admin else "user",
            scope=Scope(allow, read_only),
            person=person,
            approver=approver,
        )

    # -- fetching ---------------------------------------------------------------------------

    def _fetch_metadata(self) -> dict[str, Any]:
        problems = []
        for url in metadata_urls(self.issuer):
            try:
                metadata = fetch_json(url, self.config.oauth_timeout_s)
            except FetchError as exc:
                problems.append(str(exc))
                continue
            if metadata.get("issuer") != self.issuer:
                problems.append(f"{url} names another issuer")
                continue
            return metadata
        raise FetchError("; ".join(problems))

    def _fetch_keys(self) -> list[jwt.PyJWK]:
        url = self._jwks_uri()
        client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=self.config.oauth_timeout_s)
        try:
            return client.get_signing_keys()
        except jwt.PyJWKClientError as exc:
            raise FetchError(str(exc)[:200]) from None
        except jwt.PyJWTError as exc:  # e.g. PyJWKSetError: no usable keys
            raise FetchError(type(exc).__name__) from None

    def _jwks_uri(self) -> str:
        metadata = self.metadata.get()
        url = metadata.get("jwks_uri") if metadata else None
        if not _http_url(url):
            raise FetchError("the authorization server's metadata (jwks_uri) is not available")
        return url


def _find_key(keys: Iterable[jwt.PyJWK], kid: str | None) -> jwt.PyJWK | None:
    keys = list(keys)
    if kid is None:
        return keys[0] if len(keys) == 1 else None  # no kid: only an unambiguous key
    return next((key for key in keys if key.key_id == kid), None)


def _person(issuer: str, subject: str, claims: Mapping[str, Any]) -> Person:
    def text(*names: str) -> str | None:
        for name in names:
            value = claims.get(name)
            if isinstance(value, str) and value:
                return value[:200]
        return None

    return Person(
        issuer=issuer,
        subject=subject[:255],
        name=text("name", "preferred_username", "nickname"),
        email=text("email", "upn"),
    )


def _allow_list(
    groups: set[str], group_allow: Mapping[str, Iterable[str]]
) -> tuple[str, ...] | None:
    if not group_allow:
        return None
    patterns: dict[str, None] = {}
    for group in sorted(groups):
        patterns.update(dict.fromkeys(group_allow.get(group, ())))
    return tuple(patterns)


def _form(value: str) -> str:
    """RFC 6749 §2.3.1: client credentials are form-encoded before HTTP Basic."""
    return urllib.parse.quote_plus(value)
