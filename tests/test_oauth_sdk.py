"""The official MCP Python SDK's OAuth client (``OAuthClientProvider``) performs the whole
flow of the MCP authorization spec against Waygate on gunicorn with 2 workers: the 401 and
its resource metadata, authorization server discovery, dynamic client registration, the
authorization code with PKCE, the token (bound to Waygate's /mcp by RFC 8707), tools/call."""

from __future__ import annotations

import asyncio
import sqlite3

import httpx2
import mcp
import pytest
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

from tests.authserver import Person, TestAuthorizationServer, follow_authorization
from tests.conftest import Server, free_port


class MemoryStorage:
    def __init__(self):
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, client_info):
        self.client = client_info


class Browser:
    """Opens the authorization URL the SDK hands over and catches the redirect back."""

    def __init__(self):
        self.result: AuthorizationCodeResult | None = None
        self.opened: list[str] = []

    async def open(self, url: str) -> None:
        self.opened.append(url)
        code, state, iss = await asyncio.to_thread(follow_authorization, url)
        self.result = AuthorizationCodeResult(code=code, state=state, iss=iss)

    async def callback(self) -> AuthorizationCodeResult:
        assert self.result is not None
        return self.result


@pytest.fixture(scope="module")
def authserver():
    server = TestAuthorizationServer().start()
    yield server
    server.stop()


@pytest.fixture
def waygate(authserver, data_dir, starts_servers):
    port = free_port()
    server = Server(
        data_dir=data_dir,
        workers=2,
        port=port,
        env={
            "WAYGATE_OAUTH_ISSUER": authserver.issuer,
            "WAYGATE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        },
    ).start()
    yield server
    server.stop()


def test_the_sdk_oauth_client_discovers_registers_authorizes_and_calls_a_tool(
    authserver, waygate, data_dir
):
    authserver.signed_in = Person("alice", ["ops"], "Alice Ops", "alice@example.com")
    browser = Browser()
    provider = OAuthClientProvider(
        server_url=waygate.url + "/mcp",
        client_metadata=OAuthClientMetadata(
            client_name="waygate oauth test",
            redirect_uris=["http://127.0.0.1:9/callback"],
            grant_types=["authorization_code"],
            response_types=["code"],
            token_endpoint_auth_method="none",  # noqa: S106 - a method name, no secret
        ),
        storage=MemoryStorage(),
        redirect_handler=browser.open,
        callback_handler=browser.callback,
    )

    async def scenario():
        async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
            client = mcp.Client(streamable_http_client(waygate.url + "/mcp", http_client=http))
            async with client:
                tools = await client.list_tools()
                echoed = await client.call_tool("echo", {"message": "from a person"})
                return {tool.name for tool in tools.tools}, echoed

    names, echoed = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert "echo" in names
    assert echoed.is_error is False and echoed.structured_content == {"result": "from a person"}
    asked = authserver.requests
    for step in ("/register", "/authorize", "/token"):
        assert step in asked, (step, asked)
    assert len(browser.opened) == 1  # one authorization for the whole session
    assert (
        f"resource=http%3A%2F%2F127.0.0.1%3A{waygate.url.rsplit(':', 1)[1]}%2Fmcp"
        in (browser.opened[0])
    )
    assert "code_challenge_method=S256" in browser.opened[0]
    rows = (
        sqlite3.connect(data_dir / "waygate.db")
        .execute("SELECT action, key_name, principal FROM executions")
        .fetchall()
    )
    assert rows == [("echo", "Alice Ops", f"{authserver.issuer}#alice")]
