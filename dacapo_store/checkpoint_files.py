"""Checkpoints as plain files, outside any store: export one to a file ``torch.load`` reads,
and read a file a user names (weights only) to import it.

A file holds ``{"model": ..., "optimizer": ...}`` (what :func:`export_checkpoint` writes) or a
bare model state dict.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .records import Weights
from .safe_files import fsync_directory, open_regular_file
from .serialization import check_uncompressed_archive, fd_path, load_state
from .weights_store import WeightsStore

CHECKPOINT_FILE_KEYS = frozenset({"model", "optimizer"})


class _CountingWriter:
    """A write-only file that reports each write's size (``torch.save`` needs write and flush)."""

    def __init__(self, file: Any, written: Callable[[int], Any]) -> None:
        self._file, self._written = file, written

    def write(self, data: Any) -> int:
        count = self._file.write(data)
        self._written(count)
        return count

    def flush(self) -> None:
        self._file.flush()


def export_checkpoint(
    weights_store: WeightsStore,
    run: str,
    iteration: int,
    output: Path,
    optimizer: bool = True,
    written: Callable[[int], Any] = lambda count: None,
) -> None:
    """Write checkpoint ``iteration`` of ``run`` to ``output`` as ``{"model": ...,
    "optimizer": ...}`` (``optimizer`` ``None`` unless ``optimizer``), atomically: a temporary
    file beside it is synced, renamed over ``output`` and the directory synced; the file gets
    the permissions the umask allows. ``written`` is called with each write's byte count.

    Raises:
        CheckpointNotFoundError, CorruptCheckpointError: as
            :meth:`~dacapo_store.WeightsStore.retrieve_weights`.
        OSError: the file cannot be written (nothing is left behind).
    """
    import torch

    weights = weights_store.retrieve_weights(run, iteration, optimizer=optimizer)
    state = {"model": weights.model, "optimizer": weights.optimizer}
    handle, temporary = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, _CountingWriter(file, written))
            file.flush()
            os.fsync(file.fileno())
            os.fchmod(file.fileno(), 0o666 & ~_umask())
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_directory(output.parent)


def exported_size(weights_store: WeightsStore, run: str, iteration: int, optimizer: bool = True) -> int:
    """The stored bytes of the parts :func:`export_checkpoint` writes (an estimate of the file's
    size, e.g. for a progress bar; raises CheckpointNotFoundError)."""
    parts = ["model", "optimizer"] if optimizer else ["model"]
    stored = weights_store.checkpoint_info(run, iteration).parts
    return sum(stored[part].size for part in parts if part in stored)


def _umask() -> int:
    """The process's umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def load_checkpoint_file(path: Path) -> Any:
    """Load a checkpoint file a user names, weights only, memory-mapped (tensors are not
    copied into memory).

    Only a regular file is opened (not ``/dev/zero``, a FIFO or a directory), and only an
    archive as ``torch.save`` writes it (uncompressed records that fit in the file) is loaded.

    Raises:
        ValueError: not a regular file.
        CorruptCheckpointError: not a torch archive, compressed records, or not a plain state dict.
        OSError: the file cannot be read.
    """
    describe = f"file {path}"
    with open_regular_file(path) as file:
        check_uncompressed_archive(file, describe)
        return load_state(fd_path(file.fileno(), path), "cpu", describe, mmap=True)


def weights_from_file_state(state: Any, path: Path) -> Weights:
    """Interpret a loaded file: ``{"model": ..., "optimizer": ...}`` (optimizer optional or
    ``None``) or a bare model state dict (a dict without a dict under ``"model"``).

    Raises:
        TypeError: the file holds no state dict.
        ValueError: a checkpoint dict (a dict under ``"model"``) with keys other than
            ``model`` and ``optimizer`` (e.g. ``epoch``): storing only part of it would
            silently lose the rest.
    """
    if not isinstance(state, dict):
        raise TypeError(f"{path} holds a {type(state).__name__}, not a state dict")
    if not isinstance(state.get("model"), dict):
        return Weights(state, None)
    unknown = sorted(str(key) for key in set(state) - CHECKPOINT_FILE_KEYS)
    if unknown:
        raise ValueError(
            f"{path} holds a checkpoint with keys {unknown} besides 'model' and 'optimizer'; "
            "only model and optimizer state can be imported (save a file with just those)"
        )
    return Weights(state["model"], state.get("optimizer"))
