"""Telling for sure that a reservation's owner is gone (dacapo_store.owner)."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from dacapo_store.owner import current_owner, owner_is_dead, process_start_time, upload_ended, upload_started


def a_dead_pid() -> int:
    child = multiprocessing.get_context("fork").Process(target=os._exit, args=(0,))
    child.start()
    child.join()
    return child.pid


@pytest.fixture
def me() -> dict:
    owner = current_owner()
    if owner["pidns"] is None or owner["started"] is None:
        pytest.skip("needs Linux /proc")
    return owner


def test_a_process_that_exited_is_dead(me) -> None:
    assert owner_is_dead({**me, "pid": a_dead_pid()}, "token")


def test_a_reused_pid_is_dead_but_the_same_process_is_not(me) -> None:
    parent = os.getppid()
    alive = {**me, "pid": parent, "started": process_start_time(parent)}
    assert not owner_is_dead(alive, "token")
    assert owner_is_dead({**alive, "started": alive["started"] + 1}, "token")


@pytest.mark.parametrize("field, value", [("host", "another-host"), ("pidns", "pid:[1]"), ("pidns", None)])
def test_nothing_is_judged_on_another_host_or_namespace(me, field: str, value) -> None:
    assert not owner_is_dead({**me, "pid": a_dead_pid(), field: value}, "token")


@pytest.mark.parametrize("owner", [None, {}, {"host": "x"}, "text", {"pid": True}, {"pid": -1}])
def test_no_owner_or_a_malformed_one_is_never_judged_dead(owner) -> None:
    assert not owner_is_dead(owner, "token")


def test_this_process_owns_only_its_running_uploads(me) -> None:
    upload_started("t1")
    try:
        assert not owner_is_dead(me, "t1")
    finally:
        upload_ended("t1")
    assert owner_is_dead(me, "t1")
