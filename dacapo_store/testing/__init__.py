"""Reusable test support: the backend contract suites (``contract``), a mongomock patch
(``mongomock_support``) and a MongoDB wire-protocol test server with fault injection (``wire``)."""
