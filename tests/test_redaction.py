"""Passwords never show: not in errors, log records, reprs or CLI messages, whether the URI
escapes them or not (unescaped '/', '@', ':' and '%' among them)."""

from __future__ import annotations

import logging
import re
from urllib.parse import quote, quote_plus

import pytest
from click.testing import CliRunner

from dacapo_store import (
    ConfigurationError,
    MongoStatsStore,
    MongoWeightsStore,
    NotAuthorizedError,
    StoreConnectionError,
    create_weights_store,
    resolve_store,
)
from dacapo_store.cli import main
from dacapo_store.uri import check_credentials, redact_text, redact_uri, split_uri

PASSWORDS = ["Xq7/Kp2", "Mv@Lt-9z", "Wk4:Jy8r", "Tz5%Qb7n", "Ab1/Cd2@Ef3:Gh4%Ij5", "plain-Rw8Yc"]
UNREACHABLE = "127.0.0.1:9/lab?serverSelectionTimeoutMS=200"


def pieces(password: str) -> set[str]:
    """The password, its escaped and unescaped forms, and every piece of it (of 3 characters
    or more) between the characters that URI parsing splits on."""
    found = {password, quote_plus(password), quote(password, safe="")}
    found |= {piece for piece in re.split(r"[/@:%?]", password) if len(piece) >= 3}
    return found


def assert_hidden(text: str, password: str) -> None:
    shown = [piece for piece in pieces(password) if piece in text]
    assert not shown, f"{shown} shown in: {text}"


@pytest.fixture
def every_log_record(caplog):
    """All log records of every logger, down to DEBUG (pymongo's own among them)."""
    caplog.set_level(logging.DEBUG)
    return caplog


def assert_records_hide(caplog, password: str) -> None:
    for record in caplog.records:
        assert_hidden(record.getMessage(), password)


def assert_cli_hides(args: list[str], password: str, env: dict | None = None) -> str:
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if not line.startswith("store: ")]
    assert len(errors) == 1 and errors[0].startswith("error: ") and result.stdout == ""
    assert_hidden(result.output, password)
    return errors[0] + "\n"


@pytest.mark.parametrize(
    "uri, shown",
    [
        ("mongodb://u:S3cret/x@h/db", "mongodb://u:***@h/db"),
        ("mongodb://u:pa@ss-tail@h:27017/db?w=1", "mongodb://u:***@h:27017/db?w=1"),
        ("mongodb://u:p%40ss@h1,h2/db?replicaSet=rs0", "mongodb://u:***@h1,h2/db?replicaSet=rs0"),
        ("mongodb+srv://a:b@c/d", "mongodb+srv://a:***@c/d"),
        ("mongodb://u@h/db", "mongodb://u@h/db"),
        ("mongodb://host/db", "mongodb://host/db"),
        ("/a/local/path", "/a/local/path"),
    ],
)
def test_redact_uri_splits_at_the_last_at_sign(uri, shown) -> None:
    assert redact_uri(uri) == shown


def test_split_uri_finds_user_and_password_as_written() -> None:
    parts = split_uri("mongodb://trainer:a/b@c:d@h/db")
    assert (parts.user, parts.password, parts.rest) == ("trainer", "a/b@c:d", "h/db")
    assert split_uri("mongodb://h/db").password is None and split_uri("not a uri") is None


@pytest.mark.parametrize("password", PASSWORDS)
def test_redact_text_removes_every_form_of_the_password(password) -> None:
    uri = f"mongodb://u:{quote_plus(password)}@h/db"
    text = f"failed: {uri} and {password} and {quote(password, safe='')} and {quote_plus(password)}"
    assert_hidden(redact_text(text, uri), password)
    other = f"mongodb://v:{quote_plus(password)}@other:1/x"
    assert_hidden(redact_text(f"see {other} there", None), password)


@pytest.mark.parametrize("password", [p for p in PASSWORDS if not p.startswith("plain")])
def test_an_unescaped_password_is_refused_without_being_shown(password, every_log_record, monkeypatch) -> None:
    uri = f"mongodb://trainer:{password}@{UNREACHABLE}"
    for attempt in (lambda: MongoWeightsStore(uri), lambda: MongoStatsStore(uri), lambda: resolve_store(uri),
                    lambda: create_weights_store(uri), lambda: check_credentials(uri)):
        with pytest.raises(ConfigurationError) as caught:
            attempt()
        message = str(caught.value)
        assert "mongodb://trainer:***@127.0.0.1:9/lab" in message and "URL-escape" in message
        assert_hidden(message, password)
    assert_cli_hides(["runs", "--store", uri], password)
    monkeypatch.delenv("DACAPO_STORE_URI", raising=False)
    assert_cli_hides(["du"], password, env={"DACAPO_STORE_URI": uri})
    assert_records_hide(every_log_record, password)


@pytest.mark.parametrize("password", PASSWORDS)
def test_an_escaped_password_is_not_shown_when_the_server_is_unreachable(password, every_log_record) -> None:
    uri = f"mongodb://trainer:{quote_plus(password)}@{UNREACHABLE}"
    with pytest.raises(StoreConnectionError) as caught:
        MongoWeightsStore(uri)
    message = str(caught.value)
    assert "MongoDB at mongodb://trainer:***@127.0.0.1:9/lab" in message and "Connection refused" in message
    assert_hidden(message, password)
    assert_hidden(repr(caught.value), password)
    output = assert_cli_hides(["runs", "--store", uri], password)
    assert "trainer:***@" in output
    assert_records_hide(every_log_record, password)


@pytest.mark.parametrize("password", PASSWORDS)
def test_an_escaped_password_is_not_shown_when_authentication_fails(password, every_log_record) -> None:
    from dacapo_store.testing.wire import WireServer

    with WireServer() as server:
        uri = f"mongodb://trainer:{quote_plus(password)}@{server.address}/lab?replicaSet=rs0"
        with pytest.raises(NotAuthorizedError) as caught:
            MongoWeightsStore(uri)
        message = str(caught.value)
        assert "authentication failed" in message and "trainer:***@" in message
        assert_hidden(message, password)
        assert_cli_hides(["runs", "--store", uri], password)
        assert_records_hide(every_log_record, password)


def test_reprs_and_locations_hide_the_password() -> None:
    from dacapo_store.testing.wire import WireServer

    password = "Ab1/Cd2@Ef3:Gh4%Ij5"
    with WireServer() as server:
        uri = f"mongodb://{server.address}/lab?replicaSet=rs0"
        store = MongoWeightsStore(uri)
        store.database.display = redact_uri(f"mongodb://trainer:{quote_plus(password)}@{server.address}/lab")
        assert_hidden(repr(store), password)
        store.database.client.close()
    location = resolve_store(f"mongodb://trainer:{quote_plus(password)}@h/lab")
    assert_hidden(str(location), password)
