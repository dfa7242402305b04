"""Reusable test support: the backend contract suites and a mongomock patch."""
