"""Stand-in package (see fibsem_tools/__init__.py)."""
