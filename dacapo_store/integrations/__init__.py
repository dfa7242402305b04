"""Integrations with other frameworks: one module per framework, imported only on demand.

Importing :mod:`dacapo_store` (or this package) never imports any of those frameworks.
"""
