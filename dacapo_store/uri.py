"""Helpers for MongoDB connection strings."""

from __future__ import annotations

import re

_USERINFO = re.compile(r"^(?P<scheme>mongodb(?:\+srv)?://)(?P<user>[^:@/]*):(?P<password>[^@/]*)@")


def redact_uri(uri: str) -> str:
    """Return ``uri`` with its password replaced by ``***`` (unchanged if it has none)."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", uri)


def redact_text(text: str, uri: str) -> str:
    """Return ``text`` with every occurrence of ``uri``'s password replaced by ``***``."""
    match = _USERINFO.match(uri)
    if match and match["password"]:
        text = text.replace(match["password"], "***")
    return redact_uri(text)


def is_mongodb_uri(value: str) -> bool:
    """Whether ``value`` is a MongoDB connection string (``mongodb://`` or ``mongodb+srv://``)."""
    return value.startswith(("mongodb://", "mongodb+srv://"))
