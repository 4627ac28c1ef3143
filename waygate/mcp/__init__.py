"""The Model Context Protocol, framework-free: the JSON-RPC server (``server``), the plugins'
prompts and resources (``catalog``) and the stdio transport (``stdio``).

The HTTP transport is a blueprint like any other endpoint, ``waygate.web.mcp_api``: Flask stays
in ``web/``. Importing this package imports none of its modules.
"""
