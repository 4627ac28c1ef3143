"""The second peer: FastMCP (the most used third-party MCP server framework) with the same echo
tool, stateless HTTP with JSON responses, as an ASGI app for uvicorn
(``uvicorn bench.fastmcp_server:app``; bench/run.py starts one process per worker port), like
bench/sdk_server.py."""

from fastmcp import FastMCP

server = FastMCP("anchor")


@server.tool()
def echo(message: str) -> str:
    """Return the message unchanged."""
    return message


app = server.http_app(path="/mcp", stateless_http=True, json_response=True)
