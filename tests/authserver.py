"""A real OAuth 2.1 authorization server for the tests, built on Authlib's server components
(``AuthorizationServer``, the authorization code grant with PKCE, dynamic client registration,
introspection), served over HTTP on loopback from a thread of the test process.

It serves RFC 8414 and OpenID metadata, a JWKS whose signing key can be rotated, and mints
RFC 9068 JWT access tokens whose ``aud`` is the RFC 8707 ``resource`` the client asked for.
The person who "signs in" at ``/authorize`` is whoever the test set as ``signed_in`` (consent
is automatic). Switches make it slow (``delay_s``) or down (``down``) for outage tests, and
``opaque`` makes it issue opaque access tokens that only introspection can tell apart.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7591 import ClientRegistrationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oidc.core import UserInfo
from authlib.oidc.core.grants import OpenIDCode
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, Response, jsonify, request
from joserfc.jwk import RSAKey
from werkzeug.serving import make_server


@dataclass
class Person:
    sub: str
    groups: list[str] = field(default_factory=list)
    name: str = ""
    email: str = ""

    def get_user_id(self) -> str:
        return self.sub


@dataclass
class SigningKey:
    kid: str
    private: Any

    @classmethod
    def new(cls, kid: str) -> SigningKey:
        return cls(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @property
    def private_pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwk(self) -> dict:
        data = jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**data, "kid": self.kid, "use": "sig", "alg": "RS256"}


class Client(ClientMixin):
    def __init__(self, client_id: str, secret: str | None, metadata: dict):
        self.client_id, self.client_secret, self.metadata = client_id, secret, metadata

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return self.metadata["redirect_uris"][0]

    def get_allowed_scope(self, scope):
        return scope or ""

    def check_redirect_uri(self, redirect_uri):
        return redirect_uri in self.metadata.get("redirect_uris", [])

    def check_client_secret(self, client_secret):
        return self.client_secret is not None and secrets.compare_digest(
            self.client_secret, client_secret
        )

    def check_endpoint_auth_method(self, method, endpoint):
        if endpoint == "token":
            return method == self.metadata.get("token_endpoint_auth_method", "none")
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type):
        return response_type == "code"

    def check_grant_type(self, grant_type):
        return grant_type in ("authorization_code", "refresh_token")


@dataclass
class Code:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: Person
    resource: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    nonce: str | None = None
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope

    def get_nonce(self):
        return self.nonce

    def get_auth_time(self):
        return self.auth_time

    def get_acr(self):
        return None

    def get_amr(self):
        return None


@dataclass
class OpaqueToken:
    value: str
    client_id: str
    scope: str
    user: Person
    audience: str
    expires_at: int

    def check_client(self, client):
        return True  # the resource server may introspect any token

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return self.expires_at - int(time.time())

    def is_expired(self):
        return time.time() >= self.expires_at

    def is_revoked(self):
        return False

    def get_user(self):
        return self.user

    def get_client(self):
        return None


class TestAuthorizationServer:
    """Start with ``.start()``; ``issuer`` is its URL. Not thread-safe to reconfigure while a
    request is in flight: tests set the switches between requests."""

    __test__ = False  # a helper, not a test class

    def __init__(self):
        self.keys = [SigningKey.new("key-1")]
        self.signing = self.keys[0]
        self.clients: dict[str, Client] = {}
        self.codes: dict[str, Code] = {}
        self.opaque_tokens: dict[str, OpaqueToken] = {}
        self.signed_in = Person("alice", ["ops"], "Alice Ops", "alice@example.com")
        self.token_lifetime_s = 300
        self.opaque = False
        self.delay_s = 0.0
        self.down = False
        self.requests: list[str] = []  # paths asked for, in order
        self.issuer = ""
        self._server = None
        self._thread: threading.Thread | None = None
        self.app = self._build_app()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> TestAuthorizationServer:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.issuer = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- what tests do -------------------------------------------------------------------------

    def rotate(self) -> SigningKey:
        """A new signing key, published beside the old one and used from now on."""
        key = SigningKey.new(f"key-{len(self.keys) + 1}")
        self.keys.append(key)
        self.signing = key
        return key

    def register_client(
        self, redirect_uri: str, secret: str | None = None, auth_method: str = "none"
    ) -> Client:
        client = Client(
            secrets.token_urlsafe(8),
            secret,
            {"redirect_uris": [redirect_uri], "token_endpoint_auth_method": auth_method},
        )
        self.clients[client.client_id] = client
        return client

    def claims(self, person: Person, audience: str, scope: str, client_id: str) -> dict:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": person.sub,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + self.token_lifetime_s,
            "jti": secrets.token_urlsafe(8),
            "client_id": client_id,
            "scope": scope,
            "groups": list(person.groups),
        }
        if person.name:
            claims["name"] = person.name
        if person.email:
            claims["email"] = person.email
        return claims

    def mint(
        self,
        audience: str,
        person: Person | None = None,
        scope: str = "waygate:run",
        *,
        key: Any = None,
        alg: str = "RS256",
        headers: dict | None = None,
        **changes: Any,
    ) -> str:
        """An access token as this server would sign it, with ``changes`` to its claims
        (a None value removes one), signed by ``key`` (default: the current key)."""
        claims = self.claims(person or self.signed_in, audience, scope, "test")
        for name, value in changes.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        signer = self.signing if key is None else key
        private = signer.private if isinstance(signer, SigningKey) else signer
        kid = signer.kid if isinstance(signer, SigningKey) else None
        return jwt.encode(
            claims, private, algorithm=alg, headers={"kid": kid, "typ": "at+jwt", **(headers or {})}
        )

    # -- the server ------------------------------------------------------------------------------

    def _build_app(self) -> Flask:
        app = Flask("test-authorization-server")
        app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {"authorization_code": self.token_lifetime_s}
        server = AuthorizationServer(
            app,
            query_client=lambda client_id: self.clients.get(client_id),
            save_token=self._save_token,
        )
        owner = self

        class CodeGrant(grants.AuthorizationCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["none", "client_secret_basic", "client_secret_post"]

            def save_authorization_code(self, code, req):
                payload = req.payload
                owner.codes[code] = Code(
                    code=code,
                    client_id=req.client.client_id,
                    redirect_uri=payload.redirect_uri,
                    scope=payload.scope or "",
                    user=req.user,
                    resource=payload.data.get("resource"),
                    code_challenge=payload.data.get("code_challenge"),
                    code_challenge_method=payload.data.get("code_challenge_method"),
                    nonce=payload.data.get("nonce"),
                )

            def query_authorization_code(self, code, client):
                found = owner.codes.get(code)
                return found if found and found.client_id == client.client_id else None

            def delete_authorization_code(self, authorization_code):
                owner.codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code):
                request.environ["test_as.code"] = authorization_code
                return authorization_code.user

        class Registration(ClientRegistrationEndpoint):
            def authenticate_token(self, req):
                return True  # open registration, as the MCP spec's clients expect

            def save_client(self, client_info, client_metadata, req):
                client = Client(
                    client_info["client_id"], client_info.get("client_secret"), client_metadata
                )
                owner.clients[client.client_id] = client
                return client

            def get_server_metadata(self):
                return owner.metadata()

        class Introspection(IntrospectionEndpoint):
            CLIENT_AUTH_METHODS = ["client_secret_basic"]

            def query_token(self, token_string, token_type_hint):
                return owner.opaque_tokens.get(token_string)

            def introspect_token(self, token):
                return {
                    "active": True,
                    "iss": owner.issuer,
                    "sub": token.user.sub,
                    "aud": token.audience,
                    "scope": token.scope,
                    "client_id": token.client_id,
                    "exp": token.expires_at,
                    "groups": list(token.user.groups),
                    "name": token.user.name,
                }

            def check_permission(self, token, client, req):
                return True

        class OpenID(OpenIDCode):
            def resolve_client_private_key(self, client):
                return RSAKey.import_key(
                    owner.signing.private_pem, {"kid": owner.signing.kid, "use": "sig"}
                )

            def get_client_claims(self, client):
                return {"iss": owner.issuer, "aud": [client.get_client_id()]}

            def get_encode_header(self, client):
                return {"alg": "RS256", "kid": owner.signing.kid}

            def exists_nonce(self, nonce, req):
                return any(code.nonce == nonce for code in owner.codes.values())

            def generate_user_info(self, user, scope):
                return UserInfo(
                    sub=user.sub, name=user.name, email=user.email, groups=list(user.groups)
                )

        server.register_grant(CodeGrant, [CodeChallenge(required=True), OpenID(require_nonce=True)])
        server.register_endpoint(Registration)
        server.register_endpoint(Introspection)
        server.register_token_generator(
            "default",
            BearerTokenGenerator(self._access_token, expires_generator=lambda c, g: 300),
        )
        self.server = server

        @app.before_request
        def _switches():
            self.requests.append(request.path)
            if self.delay_s:
                time.sleep(self.delay_s)
            if self.down:
                return Response("down", 503)
            return None

        @app.get("/.well-known/oauth-authorization-server")
        @app.get("/.well-known/openid-configuration")
        def metadata():
            return jsonify(self.metadata())

        @app.get("/jwks")
        def jwks():
            return jsonify({"keys": [key.jwk() for key in self.keys]})

        @app.post("/register")
        def register():
            return server.create_endpoint_response("client_registration")

        @app.get("/authorize")
        def authorize():
            try:
                grant = server.get_consent_grant(end_user=self.signed_in)
            except OAuth2Error as error:
                return jsonify(error=error.error, description=error.description), 400
            return server.create_authorization_response(grant=grant, grant_user=self.signed_in)

        @app.post("/token")
        def token():
            return server.create_token_response()

        @app.post("/introspect")
        def introspect():
            return server.create_endpoint_response("introspection")

        return app

    def metadata(self) -> dict:
        base = self.issuer
        return {
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "registration_endpoint": f"{base}/register",
            "introspection_endpoint": f"{base}/introspect",
            "jwks_uri": f"{base}/jwks",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": [
                "none",
                "client_secret_basic",
                "client_secret_post",
            ],
            "scopes_supported": ["openid", "profile", "email", "waygate:read", "waygate:run"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "end_session_endpoint": f"{base}/logout",
        }

    def _access_token(self, client, grant_type, user, scope):
        code = request.environ.get("test_as.code")
        audience = request.form.get("resource") or (code.resource if code else None) or ""
        if self.opaque:
            value = secrets.token_urlsafe(24)
            self.opaque_tokens[value] = OpaqueToken(
                value,
                client.client_id,
                scope or "",
                user,
                audience,
                int(time.time()) + self.token_lifetime_s,
            )
            return value
        claims = self.claims(user, audience, scope or "", client.client_id)
        return jwt.encode(
            claims,
            self.signing.private,
            algorithm="RS256",
            headers={"kid": self.signing.kid, "typ": "at+jwt"},
        )

    def _save_token(self, token, req):
        pass  # JWTs need no storage; opaque ones were stored as they were made


def follow_authorization(url: str, timeout: float = 10) -> tuple[str, str | None, str | None]:
    """Open an authorization URL as a browser would (no redirects followed): the redirect's
    ``code``, ``state`` and ``iss``."""
    from urllib.parse import parse_qs, urlsplit

    import requests

    answer = requests.get(url, allow_redirects=False, timeout=timeout)
    assert answer.status_code in (302, 303), (answer.status_code, answer.text[:300])
    query = parse_qs(urlsplit(answer.headers["Location"]).query)
    if "error" in query:
        raise AssertionError(f"authorization refused: {query}")
    return query["code"][0], query.get("state", [None])[0], query.get("iss", [None])[0]
