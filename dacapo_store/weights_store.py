"""The weights store contract, and the write/read protocol every backend shares.

A checkpoint is written in three steps, so that it is all or nothing and one writer wins:

1. **reserve** ``(run, iteration)`` in the catalog (a unique key): a second writer fails here,
   before it uploads anything;
2. **stream** each part (model, optimizer) into the backend's payload storage, hashing as it goes;
3. **commit**: record sizes and digests (XXH3-128) and mark the checkpoint complete.

Only complete checkpoints are visible. An exception anywhere aborts the upload, deletes what was
written and drops the reservation. A writer killed outright leaves a reservation whose heartbeat
goes stale: a later writer may take it over after ``stale_after`` seconds, at once if the owner
is verifiably dead (see :mod:`dacapo_store.owner`), and garbage collection reclaims its payloads.
A remove deletes the catalog entry first (the checkpoint is gone at once), then the payloads.

**Overwrite.** ``put_weights(..., overwrite=True)`` on a stored checkpoint reserves a
*replacement* on its catalog entry instead of a new entry: the stored checkpoint stays visible
while the new parts are streamed, the commit swaps the entry's parts in one atomic update, and
only then are the old payloads deleted. A reader sees the old checkpoint or the new one; one
whose old payloads vanish under it reads the new one. A remove while the new parts are streamed is
ordered before the overwrite: the stored checkpoint is gone at once, the replacement claim becomes
an ordinary reservation (still live: garbage collection leaves it alone), and the commit stores
the new checkpoint.
"""

from __future__ import annotations

import functools
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import Any

from . import helper_threads
from ._garbage import (
    GARBAGE_KINDS,
    GarbageCollection,
    ORPHAN_CHUNKS,
    ORPHAN_PAYLOAD,
    PARTIAL_FILE,
    STALE_RESERVATION,
    GarbageItem,
    GarbageReport,
    StoredPayload,
    classify_garbage,
)
from ._reservations import (
    DEFAULT_STALE_AFTER,
    PendingUpload,
    Reservation,
    claim_abandoned,
    describe,
    reservation_lost,
)
from .background import BackgroundUploads
from .checks import check_iteration, check_name, dataset_name_of, run_name_of
from .errors import (
    CheckpointChangedError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    WriteConcernFailedError,
)
from .load_into import load_into
from .owner import upload_ended
from .serialization import serialize_state
from .records import PARTS, CheckpointInfo, PartInfo, RunTotals, Weights
from .score_catalog import ScoreCatalog
from .state_checks import check_loadable_weights

__all__ = [  # the contract, and the protocol's records that backends and tests import from here
    "DEFAULT_STALE_AFTER",
    "GARBAGE_KINDS",
    "ORPHAN_CHUNKS",
    "ORPHAN_PAYLOAD",
    "PARTIAL_FILE",
    "STALE_RESERVATION",
    "GarbageItem",
    "GarbageReport",
    "PendingUpload",
    "Reservation",
    "RunLike",
    "StoredPayload",
    "WeightsStore",
    "claim_abandoned",
    "classify_garbage",
    "describe",
    "reservation_lost",
]

logger = logging.getLogger(__name__)

RunLike = Any
"""A run object (with ``.name``, ``.model``, ``.optimizer``) or, where only the name is needed, a name."""


READ_ATTEMPTS = 3
"""How often a read follows a checkpoint that was replaced while it was being read, before it
raises CheckpointChangedError."""


def _changed_while_read(info: CheckpointInfo) -> CheckpointChangedError:
    """The error of a read that found ``info``'s checkpoint replaced at every attempt."""
    return CheckpointChangedError(
        f"{describe(info.run, info.iteration)} was replaced {READ_ATTEMPTS} times while it was being "
        "read (a writer overwrites it as fast as it is read); it is intact: read it again"
    )


class WeightsStore(GarbageCollection, ABC):
    """Stores checkpoints (model and optimizer state dicts) by run and iteration.

    Subclasses implement the storage primitives (the ``_``-prefixed abstract methods and the
    one-query look-ups) and set :attr:`score_catalog` (the backend's one place that answers
    best-score queries, shared with its stats store); the DaCapo methods are implemented here
    on top of them.

    Args:
        stale_after: seconds without a heartbeat after which a pending upload may be taken over.
    """

    score_catalog: ScoreCatalog
    """The backend's best-score queries (:meth:`retrieve_best` asks it)."""

    def __init__(self, stale_after: float = DEFAULT_STALE_AFTER) -> None:
        self.stale_after = stale_after
        self._failed_drops: list[Reservation] = []
        self._failed_drops_lock = threading.Lock()
        self._background = BackgroundUploads()
        """The uploads of ``store_weights(background=True)``: at most one in flight."""

    # ---- DaCapo API -------------------------------------------------------------------------

    def store_weights(
        self, run: RunLike, iteration: int, overwrite: bool = False, background: bool = False
    ) -> CheckpointInfo | Future[CheckpointInfo]:
        """Store ``run.model`` and ``run.optimizer`` state as checkpoint ``iteration``.

        With ``overwrite=True`` a stored checkpoint ``iteration`` is replaced atomically (see
        :meth:`put_weights`).

        With ``background=True`` the state is copied to CPU memory (a snapshot of exactly what a
        synchronous store would store now: later changes to the model, the optimizer or any
        value in their state do not reach it) and uploaded by a background thread, and the call
        returns at once (see :mod:`~dacapo_store.background`). At most one background upload
        per store is in flight: every ``store_weights`` call, and :meth:`flush`, first waits
        for it and raises its error if it failed.

        Returns:
            The stored checkpoint's :class:`CheckpointInfo`; with ``background``, a future of it.

        Raises:
            TypeError: ``run`` has no ``model``/``optimizer``, or a bad name/iteration type.
            ValueError: a bad run name or iteration.
            CheckpointExistsError: ``(run, iteration)`` is stored (and ``overwrite`` is false)
                or being stored or replaced by another writer (nothing is uploaded and the
                stored checkpoint stays intact). With ``background``, raised by the next call or
                :meth:`flush`, as every error of the upload.
            the previous background upload's error, if it failed (this call stores nothing).
        """
        name = run_name_of(run)
        iteration = check_iteration(iteration)
        model = getattr(run, "model", None)
        optimizer = getattr(run, "optimizer", None)
        if model is None or optimizer is None:
            raise TypeError(
                f"store_weights needs a run object with .model and .optimizer, got {type(run).__name__}"
            )
        weights = Weights(model.state_dict(), optimizer.state_dict())
        if background:
            check_loadable_weights(weights)  # a state no load accepts is refused here, not later
            return self._background.submit(
                describe(name, iteration),
                weights,
                lambda snapshot: self.put_weights(name, iteration, snapshot, overwrite=overwrite),
            )
        self.flush()
        return self.put_weights(name, iteration, weights, overwrite=overwrite)

    def flush(self) -> None:
        """Wait until this store's background upload (``store_weights(background=True)``), if
        one is in flight, is done.

        Raises:
            the upload's error, if it failed (once; the checkpoint was not stored).
        """
        self._background.flush()

    def put_weights(
        self, run: RunLike, iteration: int, weights: Weights, overwrite: bool = False
    ) -> CheckpointInfo:
        """Store the state dicts of ``weights`` as checkpoint ``iteration`` of ``run``.

        ``weights.optimizer`` may be ``None`` (a model-only checkpoint).

        With ``overwrite=True`` an already stored checkpoint ``iteration`` is replaced: it stays
        readable while the new one is streamed, the catalog switches to the new one in one
        atomic update, and the old payloads are deleted after. Readers see the old checkpoint
        or the new one, never neither and never a mix. If no checkpoint is stored, it is a
        plain store; likewise if the stored one is removed while the new one is uploaded (the
        remove is ordered before this store, which then stores the new checkpoint).

        If the catalog commit lands but reports an error (a lost reply), the stored checkpoint
        is returned: it is complete and verified like any other. A write concern failure is
        never returned as a success.

        Raises:
            TypeError / ValueError / CheckpointExistsError: as :meth:`store_weights`; also a
                ``TypeError`` naming any value that ``torch.load(weights_only=True)`` would
                refuse (a numpy number, a module, ...), before anything is stored
                (:func:`~dacapo_store.state_checks.check_loadable_weights`).
            ReservationLostError: the upload stalled beyond ``stale_after`` and another writer
                (or garbage collection) took ``(run, iteration)`` over; nothing of this upload
                stays.
            WriteConcernFailedError: a write missed its write concern; what it did is undone,
                except a commit whose undo failed too (``commit_may_survive``: the checkpoint
                is listed and may or may not survive a failover).
        """
        name = run_name_of(run)
        iteration = check_iteration(iteration)
        if not isinstance(overwrite, bool):
            raise TypeError(f"overwrite must be a bool, got {type(overwrite).__name__}")
        states = {"model": weights.model, "optimizer": weights.optimizer}
        if not isinstance(weights.model, Mapping):
            raise TypeError(f"weights.model must be a state dict, got {type(weights.model).__name__}")
        if weights.optimizer is not None and not isinstance(weights.optimizer, Mapping):
            raise TypeError(
                f"weights.optimizer must be a state dict or None, got {type(weights.optimizer).__name__}"
            )
        check_loadable_weights(weights)
        self._retry_failed_drops()
        reservation = Reservation.new(name, iteration)
        try:
            self._reserve(reservation, overwrite)
            info = self._upload(reservation, states)
        finally:
            upload_ended(reservation.token)
        if reservation.replaces is not None:
            kept = {part.location for part in info.parts.values()}
            self._delete_payloads(
                reservation.replaces, [p.location for p in reservation.replaces.parts.values() if p.location not in kept]
            )
        logger.info(
            "%s %s (%d bytes)", "replaced" if reservation.replaces else "stored", describe(name, iteration), info.size
        )
        return info

    def _upload(self, reservation: Reservation, states: Mapping[str, Any]) -> CheckpointInfo:
        """Stream the parts of the reserved checkpoint and commit it; clean up on failure
        (returning the checkpoint if its commit landed although it reported an error)."""
        try:
            parts = {
                part: self._write_part(reservation, part, states[part])
                for part in PARTS
                if states[part] is not None
            }
            return self._commit(reservation, parts)
        except WriteConcernFailedError as error:  # never a success, even if the commit is listed
            if not error.commit_may_survive:
                self._clean_up_failed_write(reservation)
            raise  # else nothing is deleted: the checkpoint may survive with these payloads
        except Exception:
            landed = self._clean_up_failed_write(reservation)
            if landed is None:
                raise
            logger.warning(
                "the commit of %s landed although it reported an error",
                describe(reservation.run, reservation.iteration),
            )
            return landed
        except BaseException:  # KeyboardInterrupt, SystemExit: clean up, never swallow
            self._clean_up_failed_write(reservation)
            raise

    def retrieve_weights(
        self, run: RunLike, iteration: int, map_location: Any = "cpu", optimizer: bool = True, mmap: bool = False
    ) -> Weights:
        """Return checkpoint ``iteration`` of ``run``, verified, loaded onto ``map_location``.

        With ``optimizer=False`` only the model part is transferred and ``Weights.optimizer``
        is ``None`` (also for model-only checkpoints). A checkpoint replaced while it is read
        is read again, whole, in its new version. The tensors are the caller's own memory,
        unchanged by anything that happens to the store afterwards. ``mmap=True`` lets a backend
        that keeps payloads in files (local) map the verified file instead: no copy, pages read
        when touched, for read-only use; see
        :func:`~dacapo_store.local.payload_file.load_payload_file` for the trade-off. Other
        backends ignore it.

        Raises:
            CheckpointNotFoundError: no complete checkpoint (a ``FileNotFoundError`` and ``ValueError``).
            CorruptCheckpointError: the payload is missing, corrupt or not a plain state dict.
            CheckpointChangedError: the checkpoint was replaced at each of :data:`READ_ATTEMPTS`
                attempts to read it (it is intact: read it again).
        """
        return self._retrieve(run, iteration, optimizer, lambda info, part: self._load_part(info, part, map_location, mmap))

    def _retrieve(
        self,
        run: RunLike,
        iteration: int,
        optimizer: bool,
        load_part: Callable[[CheckpointInfo, str], Any],
        concurrently: bool = False,
    ) -> Weights:
        """:meth:`retrieve_weights`, each part loaded by ``load_part(info, part)``; with
        ``concurrently``, each part on a thread of its own (:func:`~dacapo_store.helper_threads.run_together`)."""
        info = self.checkpoint_info(run, iteration)
        for _ in range(READ_ATTEMPTS):
            wanted = [part for part in PARTS if part in info.parts and (optimizer or part == "model")]
            states: dict[str, Any] = {}

            def load(part: str) -> None:
                states[part] = load_part(info, part)

            try:
                if concurrently and len(wanted) > 1:
                    helper_threads.run_together([functools.partial(load, part) for part in wanted])
                else:
                    for part in wanted:
                        load(part)
            except (CorruptCheckpointError, FileNotFoundError) as error:
                info = self._current_version(info, error)
                continue
            return Weights(states.get("model"), states.get("optimizer"))
        raise _changed_while_read(info)

    def load_weights(self, run: RunLike, iteration: int) -> None:
        """Load checkpoint ``iteration`` into ``run.model`` and ``run.optimizer``: both parts are
        read and verified first, then copied straight into the existing tensors
        (:func:`~dacapo_store.load_into.load_into`; the result of both ``load_state_dict`` calls).
        An optimizer without state yet has no tensors to copy into: its part is read as
        :meth:`retrieve_weights` reads it, into memory of its own that the optimizer keeps.

        Raises:
            as :meth:`retrieve_weights`; TypeError if ``run`` is a name; as ``load_state_dict``
            for a checkpoint that does not fit the model or optimizer. On any error, model and
            optimizer are left as they were.
        """
        if isinstance(run, str):
            raise TypeError("load_weights needs a run object with .model and .optimizer, not a name")
        keeps_optimizer_state = run.optimizer is not None and not run.optimizer.state  # a fresh one keeps all it is given

        def load_part(info: CheckpointInfo, part: str) -> Any:
            if part == "optimizer" and keeps_optimizer_state:
                return self._load_part(info, part, "cpu")
            return self._load_part_to_copy(info, part)

        weights = self._retrieve(run, iteration, True, load_part, self._loads_copies_concurrently() and not keeps_optimizer_state)
        load_into(
            run.model, run.optimizer, weights.model, weights.optimizer, transient=True, optimizer_transient=not keeps_optimizer_state
        )
        if weights.optimizer is None:
            logger.warning("%s has no optimizer state; optimizer left as is", describe(run.name, iteration))

    def load_best(self, run: RunLike, dataset: Any, criterion: str) -> int:
        """Load the best checkpoint for ``(dataset, criterion)`` into ``run``; return its iteration.

        ``dataset`` is a name or a dataset object with ``.name`` (as DaCapo passes).

        Raises:
            NoScoreError, CheckpointNotFoundError, CorruptCheckpointError.
        """
        iteration = self.retrieve_best(run, dataset, criterion)
        self.load_weights(run, iteration)
        return iteration

    def retrieve_best(self, run: RunLike, dataset: Any, criterion: str) -> int:
        """Return the iteration with the best score of ``run`` on ``(dataset, criterion)``.

        ``dataset`` is a name or a dataset object with ``.name`` (as DaCapo passes).

        Best is over all iterations and parameter sets, in the direction stored with each
        score; NaN never wins; ties go to the earliest iteration. One indexed query.

        Raises:
            NoScoreError: no non-NaN score (a ``ValueError`` and ``LookupError``).
            TypeError / ValueError: bad names.
        """
        return self.score_catalog.best_score(
            run_name_of(run), dataset_name_of(dataset), check_name(criterion, "criterion")
        ).iteration

    def latest_iteration(self, run: RunLike) -> int | None:
        """Return the highest iteration with a complete checkpoint, or ``None``. One query."""
        return self._latest_iteration(run_name_of(run))

    def remove(self, run: RunLike, iteration: int) -> None:
        """Remove checkpoint ``iteration`` of ``run``: it is invisible at once, then deleted.

        If another writer is overwriting it (``overwrite=True``), the remove is ordered before
        that store: its upload goes on as a plain store of the checkpoint, which its commit
        makes visible again, with the new state.

        Once the catalog entry is gone the remove is complete: a payload that cannot be
        deleted then (no permission, a lost connection) is logged as a warning and left to
        :meth:`collect_garbage`, never raised.

        Raises:
            CheckpointNotFoundError: no such complete checkpoint.
        """
        name = run_name_of(run)
        iteration = check_iteration(iteration)
        info = self._unlist(name, iteration)
        if info is None:
            raise CheckpointNotFoundError(f"no {describe(name, iteration)} is stored")
        self._delete_payloads(info, [part.location for part in info.parts.values()])
        logger.info("removed %s", describe(name, iteration))

    def _delete_payloads(self, info: CheckpointInfo, locations: Iterable[str]) -> None:
        """Delete the payloads at ``locations`` of the unlisted (or replaced) checkpoint
        ``info``; failures are logged for ``collect_garbage``, not raised."""
        for location in locations:
            try:
                self._delete_payload(location)
            except Exception as error:
                logger.warning(
                    "%s is no longer listed, but its payload %s could not be deleted (%s); "
                    "`dacapo-store gc` reclaims it",
                    describe(info.run, info.iteration),
                    location,
                    error,
                )

    # ---- listing and verification -----------------------------------------------------------

    def checkpoint_info(self, run: RunLike, iteration: int) -> CheckpointInfo:
        """Return the catalog entry of a complete checkpoint.

        Raises:
            CheckpointNotFoundError: no complete checkpoint for ``(run, iteration)``.
        """
        name = run_name_of(run)
        iteration = check_iteration(iteration)
        info = self._find(name, iteration)
        if info is None:
            raise CheckpointNotFoundError(f"no {describe(name, iteration)} is stored")
        return info

    def verify(self, run: RunLike, iteration: int) -> CheckpointInfo:
        """Re-check the size and digest of every part of a checkpoint; return its entry.

        Raises:
            CheckpointNotFoundError, CorruptCheckpointError, CheckpointChangedError: as
                :meth:`retrieve_weights`.
        """
        info = self.checkpoint_info(run, iteration)
        for _ in range(READ_ATTEMPTS):
            try:
                for part in info.parts:
                    self._verify_part(info, part)
            except CorruptCheckpointError as error:
                info = self._current_version(info, error)
                continue
            return info
        raise _changed_while_read(info)

    def _current_version(self, info: CheckpointInfo, error: BaseException) -> CheckpointInfo:
        """After a read of ``info``'s payloads failed with ``error``: return the checkpoint's
        current entry if it was replaced since (read that instead); raise
        CheckpointNotFoundError if it was removed, so that a reader racing a remove sees "not
        found", never "corrupt"; re-raise ``error`` if the checkpoint is unchanged."""
        current = self._find(info.run, info.iteration)
        if current is None:
            raise CheckpointNotFoundError(
                f"{describe(info.run, info.iteration)} was removed while it was being read"
            ) from error
        if current == info:
            raise error
        return current

    @abstractmethod
    def list_checkpoints(self, run: RunLike) -> list[CheckpointInfo]:
        """Return the complete checkpoints of ``run``, by increasing iteration."""

    @abstractmethod
    def list_runs(self) -> list[str]:
        """Return the names of runs with at least one complete checkpoint, sorted."""

    @abstractmethod
    def run_totals(self) -> list[RunTotals]:
        """Return the :class:`RunTotals` of every run with a complete checkpoint, sorted by run:
        one catalog query over all runs (pending uploads do not count)."""

    # ---- garbage collection -----------------------------------------------------------------

    stale_after: float
    """Seconds without a heartbeat after which a pending upload may be taken over; also the
    smallest ``older_than`` garbage collection takes."""

    # ---- backend primitives -----------------------------------------------------------------

    def _require_writable(self, action: str) -> None:
        """Raise ReadOnlyStoreError if the store was opened read-only. Every write of a backend
        refuses on its own; this is for a call that may find nothing to write (e.g. gc)."""

    @property
    def heartbeat_every(self) -> float:
        """Seconds between an upload's heartbeats: well inside ``stale_after``."""
        return self.stale_after / 4

    @abstractmethod
    def _reserve(self, reservation: Reservation, replace: bool) -> None:
        """Claim ``(reservation.run, reservation.iteration)`` for ``reservation``: a new pending
        entry, or with ``replace`` a replacement claim on a stored checkpoint (then set
        ``reservation.replaces``). A claim that is abandoned (:func:`claim_abandoned`, with
        ``now - stale_after``) is taken over.

        Raises:
            CheckpointExistsError: stored (without ``replace``), or being stored or replaced
                by another writer.
        """

    def _serializing(
        self, reservation: Reservation, state: Any, location: str, slice_bytes: int | None = None
    ) -> Callable[[Callable[[memoryview], object]], PartInfo]:
        """What a payload store's ``write`` runs for one part: ``state`` streamed as the payload
        at ``location`` (see :func:`~dacapo_store.serialization.serialize_state`), heart-beating
        ``reservation`` as it goes; returns the part's size and digest."""
        return lambda write: serialize_state(
            state,
            write,
            location,
            heartbeat=lambda: self._heartbeat(reservation),
            heartbeat_every=self.heartbeat_every,
            slice_bytes=slice_bytes,
        )

    @abstractmethod
    def _heartbeat(self, reservation: Reservation) -> None:
        """Show that ``reservation``'s upload is alive (called while it streams).

        Raises:
            ReservationLostError: the claim was taken over meanwhile.
        """

    @abstractmethod
    def _write_part(self, reservation: Reservation, part: str, state: Any) -> PartInfo:
        """Stream one state dict into payload storage; append its location to the reservation
        before writing; on failure abort the partial payload and re-raise."""

    @abstractmethod
    def _commit(self, reservation: Reservation, parts: Mapping[str, PartInfo]) -> CheckpointInfo:
        """Mark the reserved checkpoint complete with ``parts`` (for a replacement: swap the
        stored entry's parts for ``parts`` in one update; if a remove turned the replacement
        claim into a pending reservation, commit that and set ``reservation.replaces`` to
        ``None``); raise ReservationLostError if the claim was taken over."""

    @abstractmethod
    def _abandon(self, reservation: Reservation) -> None:
        """Delete the reservation's payloads and drop its claim (if still ours)."""

    @abstractmethod
    def _find(self, run: str, iteration: int) -> CheckpointInfo | None:
        """Return the complete checkpoint's entry, or ``None``."""

    @abstractmethod
    def _load_part(self, info: CheckpointInfo, part: str, map_location: Any, mmap: bool = False) -> Any:
        """Load one part's state dict onto ``map_location``, verified against its size and digest
        before torch parses it (see :mod:`~dacapo_store.serialization`); ``mmap``: see
        :meth:`retrieve_weights`.

        Raises CorruptCheckpointError naming run, iteration and part."""

    def _loads_copies_concurrently(self) -> bool:
        """Whether :meth:`load_weights` reads the parts it copies from (:meth:`_load_part_to_copy`)
        on a thread each (where a part's load hashes a file map, the two overlap); by default not."""
        return False

    def _load_part_to_copy(self, info: CheckpointInfo, part: str) -> Any:
        """One part's state on the CPU, verified, to be copied into a model at once and dropped
        (its tensors may view memory that must not outlive the copy); by default
        :meth:`_load_part`."""
        return self._load_part(info, part, "cpu")

    @abstractmethod
    def _verify_part(self, info: CheckpointInfo, part: str) -> None:
        """Re-check one part's stored size and digest without loading it.

        Raises CorruptCheckpointError naming run, iteration and part."""

    @abstractmethod
    def _unlist(self, run: str, iteration: int) -> CheckpointInfo | None:
        """Atomically unlist the complete checkpoint; return its entry, or ``None``. The entry
        is deleted, or, if a live upload replaces the checkpoint (a replacement claim that is
        not abandoned, see :func:`claim_abandoned`), turned into that upload's pending
        reservation (same token, heartbeat and owner), so that the upload stays live and its
        commit stores the new checkpoint."""

    @abstractmethod
    def _delete_payload(self, location: str) -> bool:
        """Delete one payload; return whether anything of it was there (a missing one is not
        an error).

        Raises:
            CorruptCheckpointError: ``location`` is not one this store gives payloads (a
                tampered catalog); nothing is deleted.
        """

    @abstractmethod
    def _latest_iteration(self, run: str) -> int | None:
        """One query: the highest complete iteration of ``run``."""

    def _clean_up_failed_write(self, reservation: Reservation) -> CheckpointInfo | None:
        """After a write failed: return the checkpoint if its commit reached the catalog anyway
        (its reply was lost); otherwise delete what the upload wrote, drop its claim and
        return ``None``. Clean-up errors are logged, not raised: the original error matters
        more. A clean-up that failed is tried again, from the catalog lookup on, before this
        store's next write; meanwhile it no longer blocks a writer in this process (its upload
        is not running), and ``collect_garbage`` reclaims what is left."""
        try:
            return self._discard_unless_committed(reservation)
        except Exception:
            logger.exception(
                "could not clean up the aborted upload of %s; retrying before the next write",
                describe(reservation.run, reservation.iteration),
            )
            with self._failed_drops_lock:
                self._failed_drops.append(reservation)
        return None

    def _discard_unless_committed(self, reservation: Reservation) -> CheckpointInfo | None:
        """Return the checkpoint of ``reservation`` if the catalog lists it (its commit landed);
        else delete what its upload wrote, drop its claim and return ``None``.

        Raises:
            Exception: whatever the catalog or the payload storage raised; nothing listed was
                deleted.
        """
        info = self._find(reservation.run, reservation.iteration)
        if info is not None and all(
            part.location in reservation.payloads for part in info.parts.values()
        ):  # payload locations are unique to one upload: this is our checkpoint
            return info
        self._abandon(reservation)
        return None

    def _retry_failed_drops(self) -> None:
        """Clean up again after the aborted uploads whose clean-up failed (see
        :meth:`_clean_up_failed_write`), keeping any whose commit turns out to have landed;
        those that fail again stay for the next write."""
        with self._failed_drops_lock:
            drops, self._failed_drops = self._failed_drops, []
        for reservation in drops:
            try:
                self._discard_unless_committed(reservation)
            except Exception as error:
                logger.debug("the clean-up of %s failed again: %s", describe(reservation.run, reservation.iteration), error)
                with self._failed_drops_lock:
                    self._failed_drops.append(reservation)
