"""Who holds a reservation, and whether that writer is verifiably gone.

A pending reservation records its owner: host name, PID namespace, process id and the
process's start time. A writer on the same host (and in the same PID namespace) can then tell
for sure that the owner is dead: no process has that pid any more, or the pid now belongs to a
process that started at another time (the pid was reused). Such a reservation need not wait
out ``stale_after`` before it is taken over. Anything less certain (another host, another
container, a system without ``/proc``) counts as alive: only the heartbeat decides then.

The current process also knows which of its own uploads are still running
(:func:`upload_running`): one of its reservations that is not running any more (its clean-up
failed, e.g. on a full disk) is as dead as a dead process's.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping
from typing import Any

_running: set[str] = set()
_running_lock = threading.Lock()


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            return file.read()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def process_start_time(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), or
    ``None`` if there is no such process or no ``/proc``."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields after its last ')'.
    fields = stat.rpartition(")")[2].split()
    try:
        return int(fields[19])  # field 22 overall: starttime
    except (IndexError, ValueError):
        return None


def current_owner() -> dict[str, Any]:
    """The owner record of this process: ``host``, ``pidns``, ``pid``, ``started``."""
    return {
        "host": socket.gethostname(),
        "pidns": _pid_namespace(),
        "pid": os.getpid(),
        "started": process_start_time(os.getpid()),
    }


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def owner_is_dead(owner: Mapping[str, Any] | None, token: str) -> bool:
    """Whether the writer ``owner`` of the upload ``token`` is verifiably gone.

    True only on the owner's own host and PID namespace, when its process no longer exists,
    its pid was reused by a later process, or it is this process and the upload is not
    running (see :func:`upload_running`). False whenever that cannot be known for sure (no
    owner recorded, another host or namespace, no ``/proc``).
    """
    if not isinstance(owner, Mapping):
        return False
    me = current_owner()
    pid = owner.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if owner.get("host") != me["host"] or owner.get("pidns") is None or owner.get("pidns") != me["pidns"]:
        return False
    if pid == me["pid"] and owner.get("started") == me["started"]:
        return not upload_running(token)
    if not _pid_exists(pid):
        return True
    started = owner.get("started")
    return started is not None and process_start_time(pid) not in (None, started)


def upload_running(token: str) -> bool:
    """Whether this process is still running the upload ``token``."""
    with _running_lock:
        return token in _running


def upload_started(token: str) -> None:
    """Record that this process runs the upload ``token`` (from its reservation on)."""
    with _running_lock:
        _running.add(token)


def upload_ended(token: str) -> None:
    """Record that the upload ``token`` of this process has ended (committed or aborted)."""
    with _running_lock:
        _running.discard(token)
