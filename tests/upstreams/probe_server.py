"""A small stdio MCP server on the official SDK for what the registries' servers do not show
on demand: a tool list that changes (notifications/tools/list_changed), a slow tool that
records its cancellation, and a tool without annotations. ``python probe_server.py DIR``;
each process writes its records as DIR/<record>-<pid>."""

import os
import sys
from pathlib import Path

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ToolAnnotations

RECORDS = Path(sys.argv[1])
server = MCPServer("probe")
READ_ONLY = ToolAnnotations(readOnlyHint=True)


def record(name: str) -> None:
    (RECORDS / f"{name}-{os.getpid()}").write_text(name)


@server.tool(annotations=READ_ONLY)
async def wait(seconds: float) -> str:
    """Sleep (recording that it started), and record a cancellation."""
    record("started")
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        record("cancelled")
        raise
    return "waited"


@server.tool(annotations=READ_ONLY)
async def grow(ctx: Context) -> str:
    """Add a tool and tell the client that the list changed."""
    server.add_tool(
        lambda: "grown", name="grown", description="added at run time", annotations=READ_ONLY
    )
    await ctx.session.send_tool_list_changed()
    return "grew"


@server.tool(annotations=READ_ONLY)
def traceparent(ctx: Context) -> str:
    """The W3C traceparent the call carried in its _meta (empty without one)."""
    meta = ctx.request_context.meta or {}
    return str(meta.get("traceparent") or "")


@server.tool()
def plain() -> str:
    """A tool that says nothing about itself."""
    return "plain"


if __name__ == "__main__":
    server.run("stdio")
