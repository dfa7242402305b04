"""MongoDB connection strings: finding the password the way pymongo does, and never showing it.

pymongo splits ``mongodb://USERINFO@HOSTS/DATABASE?OPTIONS`` on the last ``@`` before the host
list (``host_part.rpartition("@")``), and the user info on its first ``:``. A password that is
not URL-escaped may itself contain ``/``, ``?`` or ``@``, which moves pymongo's idea of where
the host list starts; here the user info therefore ends at the last ``@`` of the whole URI, so
that the part shown as redacted always covers the whole password (an ``@`` in the options
makes it cover more than the password, never less). Redaction is plain string replacement of
the password in every form it may take (as written, URL-decoded, re-encoded), never a regular
expression over the password's characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, quote_plus, unquote, unquote_plus

from .errors import ConfigurationError

SCHEMES = ("mongodb://", "mongodb+srv://")
REDACTED = "***"
MUST_ESCAPE = ("@", "/", "?", ":", "#", "[", "]")
"""Characters a user name or password must URL-escape (RFC 3986 gen-delims)."""
_URI_IN_TEXT = re.compile(r"mongodb(?:\+srv)?://[^\s'\"<>`]*")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


@dataclass(frozen=True)
class UriParts:
    """A MongoDB URI split at its user info: ``scheme`` (with ``://``), ``user`` and
    ``password`` as written (``None`` when absent), and ``rest`` (hosts, path and options)."""

    scheme: str
    user: str | None
    password: str | None
    rest: str


def is_mongodb_uri(value: str) -> bool:
    """Whether ``value`` is a MongoDB connection string (``mongodb://`` or ``mongodb+srv://``)."""
    return value.startswith(SCHEMES)


def split_uri(uri: str) -> UriParts | None:
    """Split ``uri`` at the last ``@`` (see the module doc); ``None`` if it is not a MongoDB URI."""
    scheme = next((scheme for scheme in SCHEMES if uri.startswith(scheme)), None)
    if scheme is None:
        return None
    userinfo, at, rest = uri[len(scheme):].rpartition("@")
    if not at:
        return UriParts(scheme, None, None, rest)
    user, colon, password = userinfo.partition(":")
    return UriParts(scheme, user, password if colon else None, rest)


def redact_uri(uri: str) -> str:
    """Return ``uri`` with its password replaced by ``***`` (unchanged if it has none)."""
    parts = split_uri(uri)
    if parts is None or parts.password is None:
        return uri
    return f"{parts.scheme}{parts.user}:{REDACTED}@{parts.rest}"


def password_forms(uri: str) -> list[str]:
    """Every form ``uri``'s password may take in a message: as written, URL-decoded, and
    re-encoded both ways; longest first (empty if the URI has no password)."""
    parts = split_uri(uri)
    if parts is None or not parts.password:
        return []
    raw = parts.password
    decoded = {raw, unquote(raw), unquote_plus(raw)}
    forms = decoded | {quote(form, safe="") for form in decoded} | {quote_plus(form) for form in decoded}
    return sorted((form for form in forms if form), key=len, reverse=True)


def redact_text(text: str, uri: str | None = None) -> str:
    """Return ``text`` with ``uri``'s password (in every form, see :func:`password_forms`)
    replaced by ``***``, and the password of every other MongoDB URI in it too."""
    if uri:
        text = text.replace(uri, redact_uri(uri))
        for form in password_forms(uri):
            text = text.replace(form, REDACTED)
    return _URI_IN_TEXT.sub(lambda match: redact_uri(match.group(0)), text)


def check_credentials(uri: str, source: str | None = None) -> None:
    """Refuse a URI whose user name or password is not URL-escaped, without showing it.

    pymongo would misread such a URI (an unescaped ``/`` ends the host list inside the
    password) and quote pieces of the password in its errors. The user info is taken up to
    the last ``@`` (see the module doc), so an ``@`` in the options must be escaped too.

    Args:
        uri: the URI.
        source: where the URI came from, to start the message with (e.g. ``"$DACAPO_STORE_URI"``).

    Raises:
        ConfigurationError: a character that must be escaped (``@ / ? : # [ ]``, or ``%`` not
            followed by two hex digits) in the user name or password; the message shows the
            URI redacted and names the characters, never the password.
    """
    parts = split_uri(uri)
    if parts is None or parts.user is None:
        return
    found = []
    for field, value in (("user name", parts.user), ("password", parts.password or "")):
        bad = sorted({char for char in value if char in MUST_ESCAPE})
        if _BAD_PERCENT.search(value):
            bad.append("%")
        if bad:
            found.append(f"the {field} contains {', '.join(repr(char) for char in bad)}")
    if found:
        raise ConfigurationError(
            f"{source + ': ' if source else ''}{redact_uri(uri)} is not a valid MongoDB URI: "
            f"{' and '.join(found)} (the user info ends "
            "at the last '@'); URL-escape the user name, password and any '@' in the options "
            "(urllib.parse.quote_plus): '/' as %2F, '@' as %40, ':' as %3A, '%' as %25"
        )
