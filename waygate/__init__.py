"""Waygate: a plugin-based Model Context Protocol server for operations teams."""

__version__ = "2.0.0"
SERVICE_NAME = "Waygate MCP"
