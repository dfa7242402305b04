"""Plain data records exchanged with the stores."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping


PARTS = ("model", "optimizer")
"""The separately addressable parts of a checkpoint, in storage order."""


class Weights:
    """The state of a run at one iteration: the model's and the optimizer's state dicts.

    ``optimizer`` is ``None`` when the weights were retrieved without the optimizer part.
    """

    def __init__(
        self, model_state_dict: Mapping[str, Any], optimizer_state_dict: Mapping[str, Any] | None
    ) -> None:
        self.model = model_state_dict
        self.optimizer = optimizer_state_dict

    def __repr__(self) -> str:
        optimizer = "None" if self.optimizer is None else f"<{len(self.optimizer)} keys>"
        return f"Weights(model=<{len(self.model)} tensors>, optimizer={optimizer})"


@dataclass(frozen=True)
class PartInfo:
    """One stored part of a checkpoint: its payload location, byte size and digest.

    ``digest`` is ``"<algorithm>:<hex>"`` (see :mod:`dacapo_store.digests`): ``xxh3-128`` for
    new payloads, ``sha256`` for those stored before.
    """

    location: str
    size: int
    digest: str

    def to_document(self) -> dict[str, Any]:
        """The part as the catalogs store it (a JSON object / BSON subdocument)."""
        return {"location": self.location, "size": self.size, "digest": self.digest}

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> "PartInfo":
        """Read a part back from :meth:`to_document`'s form, or from the older form that
        recorded a bare ``sha256`` hex digest."""
        digest = document["digest"] if "digest" in document else f"sha256:{document['sha256']}"
        return cls(location=document["location"], size=document["size"], digest=digest)


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete, stored checkpoint.

    ``created`` is a POSIX timestamp; ``parts`` maps part name (see :data:`PARTS`) to its
    :class:`PartInfo`; ``size`` is the sum of the parts' sizes.
    """

    run: str
    iteration: int
    created: float
    parts: Mapping[str, PartInfo] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(part.size for part in self.parts.values())


@dataclass(frozen=True)
class RunTotals:
    """What the weights store holds of one run, from one catalog query over all runs: the number
    of complete checkpoints, the highest iteration, the payload bytes of them all and when the
    newest was stored (``last_stored``, a POSIX timestamp)."""

    run: str
    checkpoints: int
    latest_iteration: int
    bytes: int
    last_stored: float


@dataclass(frozen=True)
class TrainingIterationStats:
    """Training statistics of one iteration: its loss and how long it took (seconds)."""

    iteration: int
    loss: float
    time: float


@dataclass(frozen=True)
class ValidationScore:
    """One validation score: a checkpoint evaluated on a dataset with post-processing parameters."""

    run: str
    iteration: int
    dataset: str
    criterion: str
    value: float
    higher_is_better: bool
    parameters: Mapping[str, Any] = field(default_factory=dict)


def score_rank(value: float, higher_is_better: bool) -> float | None:
    """Return the number that orders scores best-first when sorted descending.

    ``None`` for NaN: a NaN score never wins. The stores keep this rank beside each score so
    that "best" is one indexed query whatever each criterion's direction.
    """
    if math.isnan(value):
        return None
    return value if higher_is_better else -value
