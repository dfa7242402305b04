"""Storing checkpoints in the background, so that training does not wait for the upload.

``WeightsStore.store_weights(run, iteration, background=True)`` takes a snapshot of the state
dicts (:func:`snapshot_state`: every tensor copied to CPU memory, from CUDA into pinned memory),
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
from copy import deepcopy
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from . import helper_threads
from .records import CheckpointInfo, Weights
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
    """Copies tensors to host memory, one copy per storage, so tensors that share a storage
    (tied weights, views) share it in the snapshot too, as ``torch.save`` would store them.
    Buffers of the right size are taken from ``spare`` before new ones are made."""

    def __init__(self, spare: Spare) -> None:
        self._spare = spare
        self._copies: dict[int, torch.UntypedStorage] = {}
        self._sources: list[torch.UntypedStorage] = []
        """Every storage copied, held so that no other storage takes its key during the walk."""
        self.buffers: list[tuple[BufferKind, torch.Tensor]] = []
        self.host_copies: list[tuple[torch.Tensor, torch.Tensor]] = []
        """Copies between host buffers still to make: ``(target, source)``, uint8 of one size."""
        self.from_cuda = False

    def tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        if tensor.device.type == "meta":  # no data to copy
            return tensor.clone()
        if tensor.layout != torch.strided or tensor.is_quantized:
            return tensor.to("cpu", copy=True)
        storage = tensor.untyped_storage()
        key = storage._cdata  # the storage object, as torch.save tells storages apart
        copy = self._copies.get(key) if storage.nbytes() else None
        if copy is None:
            kind = (storage.nbytes(), storage.device.type == "cuda")
            pinned = kind[1]
            spare = self._spare.get(kind)
            host = spare.pop() if spare else host_buffer(*kind)
            source = torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)
            if pinned:
                host.copy_(source, non_blocking=True)  # asynchronous, on the current stream
            else:
                self.host_copies.append((host, source))
            self.buffers.append((kind, host))
            self.from_cuda |= pinned
            copy = self._copies[key] = host.untyped_storage()
            self._sources.append(storage)
        return torch.empty(0, dtype=tensor.dtype).set_(copy, tensor.storage_offset(), tensor.size(), tensor.stride())

    def state(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self.tensor(value)
        if isinstance(value, dict):
            copied = type(value)({key: self.state(item) for key, item in value.items()})
            if hasattr(value, "__dict__"):  # an OrderedDict's _metadata (load_state_dict reads it)
                copied.__dict__.update(deepcopy(vars(value)))
            return copied
        if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
            return type(value)(self.state(item) for item in value)
        return value  # numbers, strings, None: immutable


def snapshot_state(weights: Weights, spare: Spare | None = None) -> Snapshot:
    """Copy every tensor of ``weights`` to host memory (nested dicts, lists and tuples copied
    too, so later changes to the originals do not reach the snapshot), into buffers taken from
    ``spare`` where their sizes fit (they are removed from it), else new ones.

    Copies from CUDA go into pinned memory and run asynchronously on the current stream, so
    later work on that stream (the next optimizer step) runs after them.
    """
    copier = _Copier(spare if spare is not None else {})
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
    tasks = [partial(_copy_all, share) for share in shares[1:]]
    helpers: list[Future] = []
    try:
        helpers, left = helper_threads.submit(tasks)
        _copy_all(shares[0])
        for task, helper in zip(tasks, helpers):  # a share still queued behind other work: done here
            if helper.cancel():
                task()
        for task in left:
            task()
    finally:  # even if a share failed or Ctrl-C came: no helper may still write when this returns
        helper_threads.wait_for_all([helper for helper in helpers if not helper.cancel()])
    for helper in helpers:
        if not helper.cancelled():
            helper.result()


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
