"""Storing checkpoints in the background, so that training does not wait for the upload.

``WeightsStore.store_weights(run, iteration, background=True)`` takes a snapshot of the state
dicts (:func:`snapshot_state`: what a synchronous store would store at the call, every tensor
copied to CPU memory, from CUDA into pinned memory, and every other mutable value copied too),
hands it to an upload thread and returns. Per store at most one upload is in flight
(:class:`BackgroundUploads`): the next ``store_weights`` call, and ``flush()``, wait for it and
raise its error if it failed. At interpreter exit every store's upload in flight is waited for,
and a failure is logged. The upload itself is an ordinary ``put_weights``: a process killed
mid-upload leaves nothing visible.

Memory: a snapshot holds a copy of the checkpoint's tensors. Once its upload is done the store
keeps that memory for the next snapshot (the same model has the same storages), which then
costs a plain copy, without page faults or pinning: a store that stored in the background holds
one checkpoint's worth of host memory.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from . import helper_threads
from ._torch_internals import copy_lazy_bits, storage_key, tensor_pieces, typed_storage, untyped_storage
from .records import CheckpointInfo, Weights
from .gc_pause import gc_paused
from .payload_memory import private_memory

logger = logging.getLogger(__name__)


def host_buffer(nbytes: int, pinned: bool) -> torch.Tensor:
    """A new uint8 CPU tensor of ``nbytes``: page-locked (``pinned``) when it receives a copy
    from a CUDA device, so that the copy runs asynchronously (torch caches pinned blocks);
    otherwise in huge pages where the system offers them (fewer page faults while copying)."""
    if pinned or nbytes == 0:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
    return torch.frombuffer(private_memory(nbytes), dtype=torch.uint8)


BufferKind = tuple[int, bool]
"""A host buffer's size in bytes, and whether it is pinned."""
Spare = dict[BufferKind, list[torch.Tensor]]
"""Host buffers free for reuse, by kind."""


@dataclass
class Snapshot:
    """A copy of a checkpoint's state in host memory: ``weights``; ``wait()``, which returns once
    the copies are complete (call it before reading ``weights`` from another thread); and the
    host ``buffers`` it occupies (reusable once ``weights`` is no longer needed)."""

    weights: Weights
    wait: Callable[[], None]
    buffers: list[tuple[BufferKind, torch.Tensor]]


class _Copier:
    """Copies a state to host memory as ``torch.save`` would store it: every mutable value
    (tensors, storages, containers, bytearrays, dict keys, tensor attributes) is copied, and
    each object once (a memo, like pickle's), so an object met twice, or a container that holds
    itself, is one object in the copy too. Tensors are copied one storage at a time, so tensors
    that share a storage (tied weights, views) share it in the copy as well. Buffers of the right
    size are taken from ``spare`` before new ones are made."""

    def __init__(self, spare: Spare) -> None:
        self._spare = spare
        self._copies: dict[int, torch.UntypedStorage] = {}
        self._memo: dict[int, Any] = {}
        """id of an original -> its copy (the originals stay alive during the walk: ``weights``
        holds them)."""
        self._sources: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        """The host buffer and the source (a uint8 view, which holds the storage, so that no
        other storage takes its key during the walk) of every storage copied, by key."""
        self._filled_now = False
        """Whether storages met now are copied at once (the pieces a tensor is rebuilt from)."""
        self._held: list[Any] = []
        """The pieces of tensors rebuilt from them, held so that no other object takes their ids
        in the memo during the walk."""
        self.buffers: list[tuple[BufferKind, torch.Tensor]] = []
        self.host_copies: list[tuple[torch.Tensor, torch.Tensor]] = []
        """Copies between host buffers still to make: ``(target, source)``, uint8 of one size."""
        self.from_cuda = False

    def state(self, value: Any) -> Any:
        """The copy of ``value`` (one of the types :mod:`~dacapo_store.state_checks` accepts)."""
        kind = type(value)
        if kind in _IMMUTABLE or (kind is tuple and not value):
            return value
        copied = self._memo.get(id(value))
        if copied is not None:
            return copied
        if kind is torch.Tensor or kind is torch.nn.Parameter:
            return self._tensor(value)
        if kind is torch.UntypedStorage:
            copied = self._storage(value)
        elif kind is torch.TypedStorage:
            copied = typed_storage(self._storage(untyped_storage(value)), value.dtype)
        elif kind is bytearray:
            copied = bytearray(value)
        elif kind is list:
            copied = self._memo[id(value)] = []
            copied.extend(self.state(item) for item in value)
        elif isinstance(value, dict):  # dict, OrderedDict, Counter: a subclass is refused earlier
            copied = self._memo[id(value)] = kind()
            for key, item in value.items():
                copied[self.state(key)] = self.state(item)
            if hasattr(value, "__dict__"):  # an OrderedDict's _metadata (load_state_dict reads it)
                copied.__dict__.update(self.state(vars(value)))
        elif kind is tuple or kind is set:
            items = [self.state(item) for item in value]
            copied = self._memo.get(id(value))  # a tuple that holds itself through a list was made
            if copied is not None:
                return copied
            if all(copy is item for copy, item in zip(items, value)):  # nothing mutable inside
                copied = value if kind is tuple else value.copy()  # a set's copy keeps its order
            else:  # a set of tensors: its order follows their new hashes (it holds no data)
                copied = kind(items)
        else:
            raise TypeError(f"a background store cannot copy a {kind.__qualname__}; store it synchronously")
        self._memo[id(value)] = copied
        return copied

    def _tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """The copy of ``tensor`` as ``torch.save`` stores it: its data, dtype, layout, shape,
        strides, storage sharing, lazy conjugate and negation, ``requires_grad``, the Parameter
        type and its Python attributes (copied); not its gradient, autograd history or hooks,
        which ``torch.save`` drops too."""
        parameter = type(tensor) is torch.nn.Parameter
        source = tensor.detach() if parameter else tensor  # torch.save stores a Parameter's data
        if source.layout == torch.strided and not (source.is_quantized or source.is_nested or source.is_meta):
            copied = self._strided(source)
        else:  # rebuilt as torch.load would, from the pieces torch.save stores, each copied
            rebuild, pieces = tensor_pieces(source)
            self._held.append(pieces)
            self._filled_now = True  # a rebuild may read its pieces (a nested tensor's sizes)
            try:
                pieces = self.state(pieces)
            finally:
                self._filled_now = False
            copied = rebuild(*pieces)
        if parameter:
            copied = torch.nn.Parameter(copied, requires_grad=tensor.requires_grad)
        self._memo[id(tensor)] = copied  # before the attributes, which may refer to the tensor
        for name, item in vars(tensor).items():
            setattr(copied, name, self.state(item))
        return copied

    def _strided(self, source: torch.Tensor) -> torch.Tensor:
        """A dense tensor's copy: a view of the copy of its storage."""
        copied = torch.empty(0, dtype=source.dtype).set_(
            self._storage(source.untyped_storage()), source.storage_offset(), source.size(), source.stride()
        )
        copy_lazy_bits(copied, source)
        if source.requires_grad:
            copied.requires_grad_()
            if not source.is_leaf:  # nor is the copy: how a part is written depends on it
                copied = copied.view_as(copied)
        return copied

    def _storage(self, storage: torch.UntypedStorage) -> torch.UntypedStorage:
        """The host copy of ``storage``: one per storage object (as ``torch.save`` tells storages
        apart), whether met as a tensor's storage or on its own. Its bytes are copied later
        (:attr:`host_copies`, or asynchronously from CUDA), except while :attr:`_filled_now`."""
        key = storage_key(storage)
        copy = self._copies.get(key) if storage.nbytes() else None
        if copy is not None and self._filled_now:
            host, source = self._sources[key]
            host.copy_(source)  # its later copy repeats the same bytes
        if copy is None:
            kind = (storage.nbytes(), storage.device.type == "cuda")
            pinned = kind[1]
            spare = self._spare.get(kind)
            host = spare.pop() if spare else host_buffer(*kind)
            source = torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)
            if self._filled_now:
                host.copy_(source)  # from CUDA too: a blocking copy
            elif pinned:
                host.copy_(source, non_blocking=True)  # asynchronous, on the current stream
            else:
                self.host_copies.append((host, source))
            self.buffers.append((kind, host))
            self.from_cuda |= pinned
            copy = self._copies[key] = host.untyped_storage()
            self._sources[key] = (host, source)
        return copy


_IMMUTABLE = frozenset(
    {type(None), bool, int, float, complex, str, bytes, torch.Size, torch.device, torch.dtype, torch.layout, torch.qscheme}
)
"""Values a snapshot keeps as they are: nothing can change them in place."""


def snapshot_state(weights: Weights, spare: Spare | None = None) -> Snapshot:
    """Copy ``weights`` as a synchronous store would store it at this moment (see
    :class:`_Copier`: every tensor, storage and mutable value copied, sharing kept, so later
    changes to the originals do not reach the snapshot), tensor data into host buffers taken
    from ``spare`` where their sizes fit (they are removed from it), else new ones.

    ``weights`` must have passed :func:`~dacapo_store.state_checks.check_loadable_weights`.

    Copies from CUDA go into pinned memory and run asynchronously on the current stream, so
    later work on that stream (the next optimizer step) runs after them.
    """
    copier = _Copier(spare if spare is not None else {})
    with gc_paused():  # the walk makes objects by the thousand, none of them garbage
        copied = Weights(copier.state(weights.model), copier.state(weights.optimizer))
    copy_in_parallel(copier.host_copies)
    if not copier.from_cuda:
        return Snapshot(copied, lambda: None, copier.buffers)
    done = torch.cuda.Event()
    done.record()
    return Snapshot(copied, done.synchronize, copier.buffers)


PARALLEL_COPY_BYTES = 16 * 1024 * 1024
"""Host copies smaller than this in total run on the calling thread alone."""
COPY_SLICE_BYTES = 4 * 1024 * 1024
"""A large storage is copied in slices of this size, so that every thread gets a fair share."""


def copy_in_parallel(copies: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Make every ``target.copy_(source)`` of ``copies`` (uint8 tensors in host memory), split
    over :func:`~dacapo_store.helper_threads.thread_count` threads, the caller's included:
    training waits for the snapshot anyway, and one core copies at well below the memory's
    bandwidth (here 1.6x faster on two). torch releases the GIL while it copies."""
    total = sum(target.numel() for target, _ in copies)
    threads = helper_threads.thread_count()
    if threads == 1 or total < PARALLEL_COPY_BYTES:
        _copy_all(copies)
        return
    slices = [
        (target[start : start + COPY_SLICE_BYTES], source[start : start + COPY_SLICE_BYTES])
        for target, source in copies
        for start in range(0, target.numel(), COPY_SLICE_BYTES)
    ]
    shares: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(threads)]
    share_bytes = -(-total // threads)
    done = 0
    for target, source in slices:
        shares[min(threads - 1, done // share_bytes)].append((target, source))
        done += target.numel()
    helper_threads.run_together([partial(_copy_all, share) for share in shares])


def _copy_all(copies: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for target, source in copies:
        target.copy_(source)


def spare_buffers(buffers: list[tuple[BufferKind, torch.Tensor]]) -> Spare:
    """A snapshot's ``buffers`` grouped for reuse by :func:`snapshot_state`."""
    spare: Spare = {}
    for kind, buffer in buffers:
        spare.setdefault(kind, []).append(buffer)
    return spare


class BackgroundUploads:
    """The background uploads of one store: at most one in flight.

    Thread-safe: concurrent :meth:`submit` calls run their uploads one after the other.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: tuple[str, Future, threading.Thread, list[tuple[BufferKind, torch.Tensor]]] | None = None
        self._pid = os.getpid()
        """The process that started the pending upload."""
        self._spare: Spare = {}
        """The last snapshot's buffers once its upload is done: the next snapshot of the same
        state reuses them (no page faults, no pinning) instead of allocating its own."""
        _live.add(self)

    def submit(
        self, what: str, weights: Weights, upload: Callable[[Weights], CheckpointInfo]
    ) -> Future[CheckpointInfo]:
        """Snapshot ``weights`` and run ``upload(snapshot)`` on a new thread, once the previous
        upload is done. ``what`` names the checkpoint in logs and errors.

        Returns:
            A future of the stored checkpoint's :class:`CheckpointInfo`.

        Raises:
            the previous upload's error, if it failed (then nothing is submitted).
        """
        with self._lock:
            self._wait()
            snapshot = snapshot_state(weights, self._spare)
            self._spare = {}
            future: Future[CheckpointInfo] = Future()
            future.set_running_or_notify_cancel()
            thread = threading.Thread(
                target=_run, args=(future, snapshot.wait, upload, snapshot.weights),
                name=f"dacapo-store upload: {what}", daemon=True,
            )
            self._pending = (what, future, thread, snapshot.buffers)
            self._pid = os.getpid()
            thread.start()
            return future

    def flush(self) -> None:
        """Wait for the upload in flight, if any.

        Raises:
            its error, if it failed (raised once: a second flush returns).
        """
        with self._lock:
            self._wait()

    def _wait(self) -> None:
        if self._pending is None:
            return
        what, future, thread, buffers = self._pending
        if self._pid != os.getpid():  # a forked child: the upload is its parent's
            self._pending = None
            return
        thread.join()
        self._pending = None  # only once it is over: an interrupted wait leaves it to the next
        self._spare = spare_buffers(buffers)
        error = future.exception()
        if error is not None:
            if hasattr(error, "add_note"):
                error.add_note(f"raised by the background store of {what}")
            raise error


def _run(
    future: Future, copied: Callable[[], None], upload: Callable[[Weights], CheckpointInfo], snapshot: Weights
) -> None:
    """The upload thread: wait for the snapshot's copies, upload, report through ``future``."""
    try:
        copied()
        future.set_result(upload(snapshot))
    except BaseException as error:  # reported to the training thread, which decides
        future.set_exception(error)


_live: weakref.WeakSet[BackgroundUploads] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    """Wait for every upload still in flight at interpreter exit; log failures."""
    for uploads in list(_live):
        try:
            uploads.flush()
        except BaseException:
            logger.exception("a background checkpoint store failed; the checkpoint was not stored")
