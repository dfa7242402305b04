"""Storing checkpoints in the background, so that training does not wait for the upload.

``WeightsStore.store_weights(run, iteration, background=True)`` takes a snapshot of the state
dicts (:func:`snapshot_state`: every tensor copied to CPU memory, from CUDA into pinned memory),
hands it to an upload thread and returns. Per store at most one upload is in flight
(:class:`BackgroundUploads`): the next ``store_weights`` call, and ``flush()``, wait for it and
raise its error if it failed. At interpreter exit every store's upload in flight is waited for,
and a failure is logged. The upload itself is an ordinary ``put_weights``: a process killed
mid-upload leaves nothing visible.

Memory: a snapshot holds a copy of the checkpoint's tensors until its upload is done.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import torch

from .records import CheckpointInfo, Weights

logger = logging.getLogger(__name__)


def host_buffer(nbytes: int, pinned: bool) -> torch.Tensor:
    """A new uint8 CPU tensor of ``nbytes``; page-locked (``pinned``) when it receives a copy
    from a CUDA device, so that the copy runs asynchronously (torch caches pinned blocks)."""
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)


class _Snapshot:
    """Copies tensors to host memory, one copy per storage, so tensors that share a storage
    (tied weights, views) share it in the snapshot too, as ``torch.save`` would store them."""

    def __init__(self) -> None:
        self._copies: dict[tuple[str, int], torch.UntypedStorage] = {}
        self.from_cuda = False

    def tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        if tensor.device.type == "meta":  # no data to copy
            return tensor.clone()
        if tensor.layout != torch.strided or tensor.is_quantized:
            return tensor.to("cpu", copy=True)
        storage = tensor.untyped_storage()
        key = (str(storage.device), storage.data_ptr())
        copy = self._copies.get(key) if storage.nbytes() else None
        if copy is None:
            pinned = storage.device.type == "cuda"
            host = host_buffer(storage.nbytes(), pinned)
            host.copy_(torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage), non_blocking=pinned)
            self.from_cuda |= pinned
            copy = self._copies[key] = host.untyped_storage()
        return torch.empty(0, dtype=tensor.dtype).set_(copy, tensor.storage_offset(), tensor.size(), tensor.stride())

    def state(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self.tensor(value)
        if isinstance(value, dict):
            return type(value)((key, self.state(item)) for key, item in value.items())
        if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
            return type(value)(self.state(item) for item in value)
        return value  # numbers, strings, None: immutable


def snapshot_state(weights: Weights) -> tuple[Weights, Callable[[], None]]:
    """Copy every tensor of ``weights`` to CPU memory (nested dicts, lists and tuples copied
    too, so later changes to the originals do not reach the snapshot).

    Copies from CUDA go into pinned memory and run asynchronously on the current stream, so
    later work on that stream (the next optimizer step) runs after them.

    Returns:
        The snapshot, and a function that waits until its copies are complete (a no-op for
        CPU tensors): call it before reading the snapshot from another thread.
    """
    snapshot = _Snapshot()
    copied = Weights(snapshot.state(weights.model), snapshot.state(weights.optimizer))
    if not snapshot.from_cuda:
        return copied, lambda: None
    done = torch.cuda.Event()
    done.record()
    return copied, done.synchronize


class BackgroundUploads:
    """The background uploads of one store: at most one in flight.

    Thread-safe: concurrent :meth:`submit` calls run their uploads one after the other.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: tuple[str, Future, threading.Thread] | None = None
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
            snapshot, copied = snapshot_state(weights)
            future: Future[CheckpointInfo] = Future()
            future.set_running_or_notify_cancel()
            thread = threading.Thread(
                target=_run, args=(future, copied, upload, snapshot), name=f"dacapo-store upload: {what}", daemon=True
            )
            self._pending = (what, future, thread)
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
        what, future, thread = self._pending
        thread.join()
        self._pending = None  # only once it is over: an interrupted wait leaves it to the next
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
