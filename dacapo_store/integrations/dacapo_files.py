"""Reading the files DaCapo writes, without DaCapo and without running any code they hold.

Every file is read only if it is a regular file itself (never a symbolic link, FIFO, device or
socket, which could lead elsewhere, block or stream forever), no larger than a bound, and no
further than its size when opened (:mod:`dacapo_store.safe_files`).

- **Checkpoints** (``<runs_base_dir>/<run>/checkpoints/iterations/<N>``). DaCapo 0.3.5 saves
  ``torch.save(Weights(model_state, optimizer_state))``, a pickled object of its class
  ``dacapo.store.weights_store.Weights``; DaCapo before May 2022 saved
  ``{"model": ..., "optimizer": ...}``. Both are loaded by torch's weights-only unpickler, which
  builds tensors and plain containers and refuses every other global. The one global added
  to its allow-list is DaCapo's ``Weights``, *by name*, mapped to :class:`PickledWeights`, a
  data holder that accepts exactly the state ``{"model", "optimizer"}``: DaCapo's class is
  never imported (DaCapo need not be installed), and a pickle naming anything else, or
  calling anything, is refused before it runs.
- **Stats** (DaCapo's ``FileStatsStore``: ``<runs_base_dir>/stats/training_stats/<run>`` and
  ``.../validation_scores/<run>``, pickled lists of plain documents). They are loaded by an
  unpickler whose only globals are numpy's scalar and dtype constructors (DaCapo's evaluators
  produce numpy floats), so that nothing else can be called either.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import stat
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy
import torch

from ..errors import CorruptCheckpointError, DacapoStoreError
from ..records import Weights
from ..safe_files import open_regular_file
from ..serialization import fd_path, load_state

DACAPO_WEIGHTS_CLASS = "dacapo.store.weights_store.Weights"
"""The qualified name under which DaCapo 0.3.x pickles its checkpoints."""

ZIP_MAGIC = b"PK\x03\x04"

MAX_CHECKPOINT_BYTES = 1 << 40
"""Checkpoint files larger than this (1 TiB) are refused."""

MAX_STATS_BYTES = 1 << 30
"""Stats files larger than this (1 GiB, read into memory) are refused."""


class UnreadableDacapoFileError(DacapoStoreError, ValueError):
    """A DaCapo file that is not read: not a regular file, too large, or not in a DaCapo format."""


def open_dacapo_file(path: str | os.PathLike, max_bytes: int) -> BinaryIO:
    """Open one of DaCapo's files with :func:`~dacapo_store.safe_files.open_regular_file`
    (a regular file, bounded reads, no blocking open), refusing a symbolic link as well.

    Raises:
        UnreadableDacapoFileError: a symbolic link, not a regular file, or too large.
        OSError: the file cannot be opened.
    """
    if os.path.islink(path):
        raise UnreadableDacapoFileError(f"{os.fspath(path)} is a symbolic link: only a regular file is read")
    try:
        return open_regular_file(path, max_bytes)
    except ValueError as error:
        raise UnreadableDacapoFileError(str(error)) from None


class PickledWeights:
    """What DaCapo's pickled ``Weights`` becomes while it is loaded: its model and optimizer
    state dicts, and nothing else."""

    model: Any
    optimizer: Any

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict) or set(state) != {"model", "optimizer"}:
            keys = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
            raise pickle.UnpicklingError(f"DaCapo's Weights must hold exactly model and optimizer, got {keys}")
        self.model = state["model"]
        self.optimizer = state["optimizer"]


def load_checkpoint(path: str | os.PathLike, max_bytes: int = MAX_CHECKPOINT_BYTES) -> Weights:
    """Load a DaCapo checkpoint file (either format) onto the CPU, running no pickled code.

    A torch zip archive is memory-mapped (tensors are read from the file as they are used).

    Returns:
        The checkpoint's model and optimizer state dicts (the optimizer may be ``None``).

    Raises:
        UnreadableDacapoFileError: not a regular file, too large, truncated or damaged (a torch
            archive without its zip directory), refused by the restricted unpickler (it names a
            global other than torch's tensor types and DaCapo's ``Weights``; the message names
            it), not a torch file, or not a DaCapo checkpoint.
        OSError: the file cannot be read.
    """
    describe = f"DaCapo checkpoint {path}"
    with open_dacapo_file(path, max_bytes) as file:
        is_zip = file.read(4) == ZIP_MAGIC  # torch's own test for its zip format
        if is_zip:
            _check_zip_directory(file, describe)
        file.seek(0)
        try:
            with torch.serialization.safe_globals([(PickledWeights, DACAPO_WEIGHTS_CLASS)]):
                state = load_state(fd_path(file.fileno(), path) if is_zip else file, "cpu", describe, mmap=is_zip)
        except CorruptCheckpointError as error:
            refused = re.search(r"GLOBAL ([\w.]+)", str(error.__cause__))  # torch's wordings vary
            reason = (
                f"it names {refused[1]}, which a checkpoint may not call" if refused
                else "it is not a torch file of tensors, plain containers and DaCapo's Weights"
            )
            raise UnreadableDacapoFileError(f"{describe} refused: {reason}") from error
    if isinstance(state, PickledWeights):
        model, optimizer = state.model, state.optimizer
    elif isinstance(state, dict) and set(state) == {"model", "optimizer"}:
        model, optimizer = state["model"], state["optimizer"]
    else:
        what = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise UnreadableDacapoFileError(
            f"{describe} holds {what}, neither DaCapo's Weights nor a {{model, optimizer}} dict"
        )
    if not isinstance(model, Mapping) or not (optimizer is None or isinstance(optimizer, Mapping)):
        raise UnreadableDacapoFileError(f"{describe}: its model and optimizer are not state dicts")
    return Weights(model, optimizer)


def _check_zip_directory(file: BinaryIO, describe: str) -> None:
    """Read the zip directory at the end of the torch archive ``file``: a truncated archive
    has none, and torch would fail on it with an unrelated error (``[Errno 22] Invalid argument``).

    Raises:
        UnreadableDacapoFileError: the archive is truncated or damaged.
    """
    try:
        zipfile.ZipFile(file).close()  # leaves ``file`` open
    except (zipfile.BadZipFile, EOFError, ValueError) as error:
        raise UnreadableDacapoFileError(
            f"{describe} is truncated or damaged: no valid zip directory at its end ({error})"
        ) from None


_NUMPY_SCALAR = numpy.float64(0).__reduce__()[0]
_STATS_GLOBALS = {
    ("numpy", "dtype"): numpy.dtype,
    ("numpy.core.multiarray", "scalar"): _NUMPY_SCALAR,
    ("numpy._core.multiarray", "scalar"): _NUMPY_SCALAR,
}


class _StatsUnpickler(pickle.Unpickler):
    """Plain data, numpy scalars and dtypes; every other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _STATS_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: a stats file holds plain data") from None


def load_stats_file(path: str | os.PathLike, max_bytes: int = MAX_STATS_BYTES) -> list[dict[str, Any]]:
    """Load one of DaCapo's stats files: a pickled list of documents (dicts).

    Raises:
        UnreadableDacapoFileError: not a regular file, too large, refused by the restricted
            unpickler, or not a list of dicts.
        OSError: the file cannot be read.
    """
    with open_dacapo_file(path, max_bytes) as file:
        data = file.read()
    try:
        documents = _StatsUnpickler(io.BytesIO(data)).load()
    except Exception as error:  # a malformed pickle fails in many ways; none of them runs code
        raise UnreadableDacapoFileError(f"DaCapo stats file {path} refused: {type(error).__name__}: {error}") from None
    if not isinstance(documents, list) or not all(isinstance(document, dict) for document in documents):
        raise UnreadableDacapoFileError(f"DaCapo stats file {path} does not hold a list of documents")
    return documents


def is_regular_file(path: Path) -> bool:
    """Whether ``path`` is a regular file itself (a symbolic link is not)."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False
