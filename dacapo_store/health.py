"""What a store's health check finds: one :class:`Finding` per thing checked (see
:meth:`dacapo_store.Store.check_health`)."""

from __future__ import annotations

from dataclasses import dataclass

OK, WARNING, PROBLEM = "ok", "warning", "problem"
OLDEST_SERVER = (4, 4)
"""The oldest MongoDB that pymongo 4 talks to (the MongoDB health check's floor)."""


@dataclass(frozen=True)
class Finding:
    """One result: ``level`` is ``"ok"``, ``"warning"`` (works, but a risk or a limit) or
    ``"problem"`` (the store cannot work as intended); ``topic`` names what was checked."""

    level: str
    topic: str
    message: str
