"""Waygate's built-in plugins. They use only ``waygate.sdk``, exactly as an outside plugin
would, and are found through the ``waygate.plugins`` entry points in setup.cfg."""
