"""Shipped MpGI recipes (YAML), loaded by name with :func:`importlib.resources`."""
