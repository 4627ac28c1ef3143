"""The peer: the official MCP Python SDK's server with the same echo tool, stateless with JSON
responses, as an ASGI app for uvicorn (``uvicorn bench.sdk_server:app``; bench/run.py starts one
process per worker port)."""

from mcp.server.mcpserver import MCPServer

server = MCPServer("anchor")


@server.tool()
def echo(message: str) -> str:
    """Return the message unchanged."""
    return message


app = server.streamable_http_app(stateless_http=True, json_response=True)
