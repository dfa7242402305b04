"""Importing existing DaCapo runs into dacapo-store: checkpoints, training stats, scores.

What is read (without DaCapo installed; see :mod:`.dacapo_files` for how files are read):

- every checkpoint ``<runs_base_dir>/<run>/checkpoints/iterations/<N>`` (both DaCapo formats);
- DaCapo's training stats and validation scores, from its local stats files
  (:class:`FileStatsSource`, ``<runs_base_dir>/stats``) and/or its MongoDB collections
  ``training_stats`` and ``validation_scores`` (:class:`MongoStatsSource`).

DaCapo stores a validation score as a bare number at a position (dataset, parameter set,
criterion) of a nested list; naming the positions needs the run's layout, which only DaCapo
can rebuild from the run's config (see ``layout_source``). Without one, a run's validation
scores are left out, and the report says so.

The import is idempotent: a checkpoint, training stat or score already in the store is
left as it is and counted as present. Every imported checkpoint is verified (size and digest
re-checked from the store) before it counts as imported.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..checks import check_iteration, check_name, parameters_key
from ..config import StoreLocation, location_from_options_file, options_file_candidates
from ..errors import CheckpointExistsError, CheckpointNotFoundError, DacapoStoreError
from ..mongo.connection import MongoDatabase  # noqa: F401  (what DaCapo's MongoDB is opened with; see dacapo_mongo_location)
from ..records import TrainingIterationStats
from ..stats_store import StatsStore
from ..uri import redact_text
from ..weights_store import WeightsStore
from .dacapo_files import UnreadableDacapoFileError, is_regular_file, load_checkpoint, load_stats_file
from .dacapo_scores import LayoutSource, ScoreLayout, score_value

logger = logging.getLogger(__name__)

ITERATION_NAME = re.compile(r"^[0-9]+$")


@dataclass(frozen=True)
class CheckpointFile:
    """One DaCapo checkpoint file: ``<runs_base_dir>/<run>/checkpoints/iterations/<iteration>``."""

    run: str
    iteration: int
    path: Path
    size: int


@dataclass
class RunImport:
    """What importing one run did: counts of what was new (``*_imported``) and what the
    store held already (``*_present``), the checkpoint ``failures`` (file: reason) and
    ``notes`` (what was left out, and why)."""

    run: str
    checkpoints_imported: int = 0
    checkpoints_present: int = 0
    bytes_imported: int = 0
    training_stats_imported: int = 0
    training_stats_present: int = 0
    scores_imported: int = 0
    scores_present: int = 0
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def imported(self) -> int:
        """How many checkpoints, training stats and scores were new."""
        return self.checkpoints_imported + self.training_stats_imported + self.scores_imported


@dataclass
class ImportReport:
    """What an import did, run by run; ``notes`` concern no single run."""

    runs: list[RunImport]
    notes: list[str] = field(default_factory=list)

    @property
    def nothing_new(self) -> bool:
        """Whether nothing was imported and nothing failed (everything found was in the store
        already)."""
        return all(run.imported == 0 for run in self.runs) and not self.failures

    @property
    def failures(self) -> list[str]:
        """Every checkpoint that could not be imported, with the reason."""
        return [failure for run in self.runs for failure in run.failures]


class DacapoStatsSource(Protocol):
    """Where DaCapo kept its stats: documents as its stores wrote them."""

    description: str

    def run_names(self) -> list[str]:
        """Names of the runs with stats here."""

    def training_stats(self, run: str) -> list[Mapping[str, Any]]:
        """``{"iteration", "loss", "time", ...}`` documents of ``run``."""

    def validation_scores(self, run: str) -> list[Mapping[str, Any]]:
        """``{"iteration", "scores", ...}`` documents of ``run`` (``scores`` nested as DaCapo nests them)."""


class FileStatsSource:
    """DaCapo's ``FileStatsStore`` files: ``<stats_dir>/training_stats/<run>`` and
    ``<stats_dir>/validation_scores/<run>`` (``stats_dir`` is ``<runs_base_dir>/stats``)."""

    def __init__(self, stats_dir: str | os.PathLike) -> None:
        self.stats_dir = Path(stats_dir)
        self.description = f"DaCapo stats files in {self.stats_dir}"

    def run_names(self) -> list[str]:
        names: set[str] = set()
        for kind in ("training_stats", "validation_scores"):
            folder = self.stats_dir / kind
            if folder.is_dir():
                names.update(entry.name for entry in folder.iterdir() if is_regular_file(entry))
        return sorted(names)

    def training_stats(self, run: str) -> list[Mapping[str, Any]]:
        return self._documents("training_stats", run)

    def validation_scores(self, run: str) -> list[Mapping[str, Any]]:
        return self._documents("validation_scores", run)

    def _documents(self, kind: str, run: str) -> list[Mapping[str, Any]]:
        """The documents of ``run``'s stats file of ``kind`` (none if there is no such file).

        Raises:
            UnreadableDacapoFileError: the file, or a folder above it in the stats folder, is a
                symbolic link (or the file cannot be read, see :func:`load_stats_file`).
        """
        path = self.stats_dir / kind / run
        for folder in (self.stats_dir, path.parent):
            if folder.is_symlink():
                raise UnreadableDacapoFileError(f"{folder} is a symbolic link: only regular files and folders are read")
        return load_stats_file(path) if path.exists() or path.is_symlink() else []


class MongoStatsSource:
    """DaCapo's ``MongoStatsStore`` collections ``training_stats`` and ``validation_scores``
    (documents with a ``run_name`` field) of a pymongo (or mongomock) database; read only."""

    def __init__(self, database: Any, description: str | None = None) -> None:
        self.database = database
        self.description = description or f"DaCapo's MongoDB database {database.name!r}"

    def run_names(self) -> list[str]:
        names: set[str] = set()
        for kind in ("training_stats", "validation_scores"):
            names.update(name for name in self.database[kind].distinct("run_name") if isinstance(name, str))
        return sorted(names)

    def training_stats(self, run: str) -> list[Mapping[str, Any]]:
        return list(self.database["training_stats"].find({"run_name": run}, projection={"_id": False}))

    def validation_scores(self, run: str) -> list[Mapping[str, Any]]:
        return list(self.database["validation_scores"].find({"run_name": run}, projection={"_id": False}))


def dacapo_mongo_from_options() -> StoreLocation | None:
    """DaCapo's MongoDB as its options file says (``type: mongo``, ``mongo_db_host``,
    ``mongo_db_name``), from the first of ``$DACAPO_OPTIONS_FILE``, ``./dacapo.yaml``,
    ``~/.config/dacapo/dacapo.yaml`` that exists; ``None`` if that file says ``type: files``
    or there is none.

    Raises:
        ConfigurationError: the options file is unreadable or malformed.
    """
    for candidate in options_file_candidates():
        if candidate.is_file():
            location = location_from_options_file(candidate)
            return location if location.kind == "mongo" else None
    return None


def dacapo_mongo_location(uri: str | None, db_name: str | None) -> tuple[str, str] | None:
    """Where DaCapo's MongoDB is, as ``(uri, database)`` for a
    :class:`~dacapo_store.mongo.connection.MongoDatabase`: the given URI, else the one DaCapo's
    options file names (see :func:`dacapo_mongo_from_options`), else ``None``. The database is
    ``db_name``, else the URI's (or the options file's), else ``"dacapo"``.

    Raises:
        ConfigurationError: a malformed URI (password never shown) or options file.
    """
    from ..config import resolve_store

    if uri is None:
        location = dacapo_mongo_from_options()
        if location is None:
            return None
        uri, db_name = location.target, db_name or location.db_name
    return uri, db_name if db_name is not None else resolve_store(uri).db_name


def dacapo_layout_source(
    runs_base_dir: str | os.PathLike, mongo_uri: str | None = None, mongo_db: str | None = None
) -> tuple[LayoutSource | None, str]:
    """Layouts from the run configs in DaCapo's config stores: its config files
    (``<runs_base_dir>/configs``, if there) and its MongoDB (if given). Needs DaCapo.

    What DaCapo prints meanwhile is discarded: it would mix with a command's output (its
    ``--json``), and DaCapo prints its MongoDB URI, password included.

    Returns:
        The layout source (``None`` without DaCapo or any config store), and a sentence
        saying where layouts come from, or why there are none.
    """
    try:
        from dacapo.store.file_config_store import FileConfigStore
        from dacapo.store.mongo_config_store import MongoConfigStore

        from .dacapo_adapters import layout_from_config_store
    except ImportError:
        return None, "DaCapo is not installed (pip install 'dacapo-store[dacapo]')"
    sources, places, problems = [], [], []
    configs = Path(runs_base_dir) / "configs"
    openers = []
    if configs.is_dir():
        openers.append((str(configs), lambda: FileConfigStore(configs)))
    if mongo_uri is not None:
        openers.append((f"MongoDB database {mongo_db!r}", lambda: MongoConfigStore(mongo_uri, mongo_db)))
    for place, opener in openers:
        try:
            with redirect_stdout(io.StringIO()):
                sources.append(layout_from_config_store(opener()))
            places.append(place)
        except Exception as error:  # DaCapo's stores fail in their own ways (e.g. no index privilege)
            detail = redact_text(" ".join(str(error).split())[:200], mongo_uri or "")
            problems.append(f"DaCapo's config store in {place} cannot be opened ({type(error).__name__}: {detail})")
    if not sources:
        return None, "; ".join(problems) or f"no DaCapo config store ({configs} does not exist, no MongoDB given)"

    def layout(run: str) -> ScoreLayout | None:
        with redirect_stdout(io.StringIO()):
            return next((found for source in sources if (found := source(run)) is not None), None)

    return layout, "; ".join(["run configs in " + " and ".join(places), *problems])


def find_checkpoints(
    runs_base_dir: str | os.PathLike, run: str | None = None
) -> tuple[list[CheckpointFile], list[str]]:
    """Find DaCapo's checkpoint files under ``runs_base_dir`` (of one ``run`` if given).

    Only what lies inside ``runs_base_dir`` is read: a run, ``checkpoints`` or
    ``iterations`` directory that is a symbolic link is skipped with a note, and so is
    anything in an ``iterations`` folder but a regular file named by a decimal iteration, and
    a run whose name dacapo-store refuses. Two names of one iteration (``4`` and ``0004``) are
    ambiguous: neither is imported, and a note says so.

    Returns:
        The checkpoint files by run and iteration, and the notes.
    """
    base = Path(runs_base_dir)
    notes: list[str] = []
    if run is not None:
        run_dirs = [base / run]
    else:
        run_dirs = sorted(entry for entry in base.iterdir() if entry.is_dir() or entry.is_symlink())
    found = []
    for run_dir in run_dirs:
        folder = run_dir / "checkpoints" / "iterations"
        link = next((path for path in (run_dir, folder.parent, folder) if path.is_symlink()), None)
        if link is not None:
            if folder.is_dir():  # only a link that leads to checkpoints is worth a note
                notes.append(f"skipped {link}: a symbolic link (only what is inside {base} is read)")
            continue
        if not folder.is_dir():
            continue
        try:
            name = check_name(run_dir.name, "run")
        except (TypeError, ValueError) as error:
            notes.append(f"skipped {run_dir}: {error}")
            continue
        by_iteration: dict[int, list[Path]] = {}
        for entry in sorted(folder.iterdir()):
            if not ITERATION_NAME.match(entry.name):
                notes.append(f"skipped {entry}: not an iteration number")
            elif not is_regular_file(entry):
                notes.append(f"skipped {entry}: not a regular file")
            else:
                try:
                    by_iteration.setdefault(check_iteration(int(entry.name)), []).append(entry)
                except ValueError as error:
                    notes.append(f"skipped {entry}: {error}")
        for iteration, entries in by_iteration.items():
            if len(entries) > 1:
                notes.append(
                    f"skipped iteration {iteration} of run {name!r}: {len(entries)} files name it "
                    f"({', '.join(entry.name for entry in entries)} in {folder}); none is imported"
                )
            else:
                found.append(CheckpointFile(name, iteration, entries[0], entries[0].lstat().st_size))
    return sorted(found, key=lambda item: (item.run, item.iteration)), notes


def import_dacapo_runs(
    runs_base_dir: str | os.PathLike,
    weights_store: WeightsStore,
    stats_store: StatsStore,
    run: str | None = None,
    stats_sources: Iterable[DacapoStatsSource] = (),
    layout_source: LayoutSource | None = None,
    on_checkpoint: Callable[[CheckpointFile], None] | None = None,
) -> ImportReport:
    """Import DaCapo's runs under ``runs_base_dir`` (only ``run`` if given) into the stores.

    Args:
        runs_base_dir: DaCapo's ``runs_base_dir``.
        weights_store, stats_store: where to import to.
        run: import only this run.
        stats_sources: where DaCapo kept its training stats and validation scores.
        layout_source: run name -> its score layout (needs DaCapo); without one, validation
            scores are not imported.
        on_checkpoint: called after each checkpoint file is handled (for a progress bar).

    Returns:
        The :class:`ImportReport`. A checkpoint file that cannot be imported (refused,
        unreadable, failed verification) is reported in its run's ``failures``; the import
        goes on with the others.

    Raises:
        FileNotFoundError: ``runs_base_dir`` is not a directory, or ``run`` is given and
            nothing of it is found.
        TypeError / ValueError: a bad ``run`` name.
    """
    base = Path(runs_base_dir)
    if not base.is_dir():
        raise FileNotFoundError(f"{base} is not a directory (DaCapo's runs_base_dir)")
    if run is not None:
        check_name(run, "run")
    sources = list(stats_sources)
    checkpoints, notes = find_checkpoints(base, run)
    names = {item.run for item in checkpoints} | {name for source in sources for name in source.run_names()}
    if run is not None:
        names &= {run}
        if not names:
            raise FileNotFoundError(f"no checkpoints or stats of run {run!r} under {base} or in the stats sources")
    reports = {name: RunImport(name) for name in sorted(names)}
    for item in checkpoints:
        _import_checkpoint(item, weights_store, reports[item.run])
        if on_checkpoint is not None:
            on_checkpoint(item)
    for name, report in reports.items():
        for source in sources:
            _import_training_stats(name, source, stats_store, report)
            _import_scores(name, source, stats_store, layout_source, report)
    return ImportReport(list(reports.values()), notes)


def _import_checkpoint(item: CheckpointFile, weights_store: WeightsStore, report: RunImport) -> None:
    try:
        weights_store.checkpoint_info(item.run, item.iteration)
        report.checkpoints_present += 1
        return
    except CheckpointNotFoundError:
        pass
    try:
        info = weights_store.put_weights(item.run, item.iteration, load_checkpoint(item.path))
        weights_store.verify(item.run, item.iteration)
    except CheckpointExistsError:  # another writer stored it meanwhile
        report.checkpoints_present += 1
        return
    except (DacapoStoreError, OSError, ValueError, TypeError, RuntimeError, pickle.UnpicklingError) as error:
        failure = str(error) if str(item.path) in str(error) else f"{item.path}: {error}"
        report.failures.append(failure)
        logger.info("not imported: %s", failure)  # reported once, in the report
        return
    report.checkpoints_imported += 1
    report.bytes_imported += info.size


def _import_training_stats(run: str, source: DacapoStatsSource, stats_store: StatsStore, report: RunImport) -> None:
    try:
        documents = source.training_stats(run)
    except (DacapoStoreError, OSError, ValueError) as error:
        report.notes.append(f"training stats not read from {source.description}: {error}")
        return
    present = {row.iteration for row in stats_store.retrieve_training_stats(run)}
    rows: dict[int, TrainingIterationStats] = {}
    for document in documents:
        try:
            row = TrainingIterationStats(
                check_iteration(document["iteration"]),
                score_value(document.get("loss")),
                score_value(document.get("time")),
            )
        except (KeyError, TypeError, ValueError) as error:
            report.notes.append(f"skipped a training stat of {source.description}: {type(error).__name__}: {error}")
            continue
        if row.iteration in present:
            report.training_stats_present += 1
        else:
            rows[row.iteration] = row
    stats_store.store_training_stats(run, list(rows.values()))
    report.training_stats_imported += len(rows)


def _import_scores(
    run: str, source: DacapoStatsSource, stats_store: StatsStore, layout_source: LayoutSource | None, report: RunImport
) -> None:
    try:
        documents = source.validation_scores(run)
    except (DacapoStoreError, OSError, ValueError) as error:
        report.notes.append(f"validation scores not read from {source.description}: {error}")
        return
    if not documents:
        return
    layout = layout_source(run) if layout_source is not None else None
    if layout is None:
        report.notes.append(
            f"{len(documents)} validation iteration(s) in {source.description} not imported: naming their "
            "datasets, parameters and criteria needs DaCapo and the run's config"
        )
        return
    present = {
        (s.iteration, s.dataset, s.criterion, parameters_key(s.parameters))
        for s in stats_store.retrieve_validation_scores(run)
    }
    for document in documents:
        try:
            iteration = check_iteration(document["iteration"])
            groups, skipped = layout.split(document["scores"])
        except (KeyError, TypeError, ValueError) as error:
            report.notes.append(f"skipped validation scores of {source.description}: {type(error).__name__}: {error}")
            continue
        report.notes.extend(f"iteration {iteration}: scores not imported ({reason})" for reason in skipped)
        for group in groups:
            key = parameters_key(group.parameters)
            new = {c: v for c, v in group.scores.items() if (iteration, group.dataset, c, key) not in present}
            report.scores_present += len(group.scores) - len(new)
            if new:
                stats_store.store_validation_scores(
                    run, iteration, group.dataset, new, layout.higher_is_better, group.parameters
                )
                report.scores_imported += len(new)
