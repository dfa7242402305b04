"""Stand-in for fibsem_tools in tests: DaCapo 0.3.5 imports it, but its stores and training
loop never use it (see tests/dacapo/conftest.py)."""
