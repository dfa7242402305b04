"""DaCapo's store interfaces answered by dacapo-store stores (this module imports DaCapo).

:class:`DacapoWeightsStore` and :class:`DacapoStatsStore` subclass DaCapo 0.3.5's abstract
``WeightsStore`` and ``StatsStore`` and implement every method DaCapo's code calls on them
(including those only its ``LocalWeightsStore`` and ``MongoStatsStore`` have), on top of a
dacapo-store :class:`~dacapo_store.WeightsStore` and :class:`~dacapo_store.StatsStore`.
:func:`dacapo_store.integrations.dacapo.install` makes DaCapo create them.

DaCapo hands its stats store whole objects: the run's complete ``TrainingStats`` and
``ValidationScores`` every time. Like DaCapo's own stores, the adapters write only what is new,
and replace what is stored when the object ends before the stored history does (a resume
that went back, a restart from scratch). To know what is new without reading the whole
history on every call, the adapters of one dacapo-store stats store share, per process, what
they last read or wrote of each run, and which of DaCapo's score entries mirror stored rows.
That assumes one trainer per run, as dacapo-store does everywhere.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import attr
from dacapo.experiments import TrainingIterationStats as DacapoIterationStats
from dacapo.experiments import TrainingStats, ValidationIterationScores, ValidationScores
from dacapo.store.stats_store import StatsStore as DacapoStatsStoreBase
from dacapo.store.weights_store import Weights as DacapoWeights
from dacapo.store.weights_store import WeightsStore as DacapoWeightsStoreBase

from ..checks import check_name, run_name_of
from ..errors import CheckpointNotFoundError, NoScoreError
from ..records import TrainingIterationStats
from ..stats_store import StatsStore
from ..weights_store import WeightsStore
from .dacapo_scores import LayoutSource, ScoreLayout, json_safe

logger = logging.getLogger(__name__)


# ---- score layouts from DaCapo's objects ---------------------------------------------------------


def parameters_json(parameters: Any) -> dict[str, Any]:
    """A DaCapo ``PostProcessorParameters`` as a JSON object (its attrs fields, ``id`` included)."""
    fields = attr.asdict(parameters) if attr.has(type(parameters)) else dict(vars(parameters))
    return json_safe(fields)


def make_layout(datasets: Iterable[Any], parameters: Iterable[Any], evaluation_scores: Any) -> ScoreLayout:
    """The layout of DaCapo's validation datasets (objects or configs with ``.name``),
    post-processing parameter sets and evaluation scores (``criteria``, ``higher_is_better``)."""
    criteria = tuple(evaluation_scores.criteria)
    return ScoreLayout(
        datasets=tuple(dataset.name for dataset in datasets),
        parameters=tuple(parameters_json(p) for p in parameters),
        criteria=criteria,
        higher_is_better={c: bool(evaluation_scores.higher_is_better(c)) for c in criteria},
    )


def layout_of(validation_scores: ValidationScores) -> ScoreLayout:
    """The layout of a DaCapo ``ValidationScores`` object."""
    return make_layout(
        validation_scores.datasets or (), validation_scores.parameters or (), validation_scores.evaluation_scores
    )


def layout_from_run_config(run_config: Any) -> ScoreLayout:
    """The layout of a DaCapo ``RunConfig``, as ``Run.get_validation_scores`` would build it.

    The validation datasets are named from the datasplit config's ``validate_configs`` where it
    has them, so that no data is opened; otherwise the datasplit is built.
    """
    task = run_config.task_config.task_type(run_config.task_config)
    datasplit_config = run_config.datasplit_config
    datasets = getattr(datasplit_config, "validate_configs", None)
    if datasets is None:
        datasets = datasplit_config.datasplit_type(datasplit_config).validate or ()
    return make_layout(datasets, task.parameters, task.evaluation_scores)


def layout_from_config_store(config_store: Any) -> LayoutSource:
    """A :data:`LayoutSource` reading run configs from a DaCapo config store (``None`` for a
    run whose config is missing or cannot be rebuilt here)."""

    def layout(run_name: str) -> ScoreLayout | None:
        try:
            return layout_from_run_config(config_store.retrieve_run_config(run_name))
        except Exception as error:  # a missing config fails differently per DaCapo store type
            logger.info("no DaCapo run config for run %r (%s: %s)", run_name, type(error).__name__, error)
            return None

    return layout


def layout_from_dacapo_options(run_name: str) -> ScoreLayout | None:
    """The run's layout from the config store DaCapo's options designate (``None`` if unknown)."""
    from dacapo.store import create_store

    try:
        config_store = create_store.create_config_store()
    except Exception as error:  # DaCapo's options may name a store that cannot be opened here
        logger.info("cannot open DaCapo's config store (%s: %s)", type(error).__name__, error)
        return None
    return layout_from_config_store(config_store)(run_name)


# ---- weights --------------------------------------------------------------------------------------


class DacapoWeightsStore(DacapoWeightsStoreBase):
    """DaCapo's ``WeightsStore`` (and the extra methods of its ``LocalWeightsStore``) on a
    dacapo-store weights store.

    Args:
        weights: where checkpoints are stored.
        stats: where DaCapo's validation scores are; the best checkpoint is read from them.
    """

    def __init__(self, weights: WeightsStore, stats: StatsStore) -> None:
        self.weights = weights
        self.stats = stats

    def __repr__(self) -> str:
        return f"DacapoWeightsStore({self.weights!r}, {self.stats!r})"

    def latest_iteration(self, run: Any) -> int | None:
        """The highest stored checkpoint of ``run`` (a run or its name), or ``None``."""
        return self.weights.latest_iteration(run)

    def store_weights(self, run: Any, iteration: int) -> None:
        """Store ``run.model`` and ``run.optimizer`` as checkpoint ``iteration``, replacing a
        stored one atomically (DaCapo saves the same iteration again when it resumes)."""
        self.weights.store_weights(run, iteration, overwrite=True)

    def retrieve_weights(self, run: Any, iteration: int) -> DacapoWeights:
        """Checkpoint ``iteration`` of ``run`` as DaCapo's ``Weights``, on the CPU.

        Raises:
            CheckpointNotFoundError: not stored (a ``FileNotFoundError``, as DaCapo raises).
        """
        weights = self.weights.retrieve_weights(run, iteration)
        return DacapoWeights(weights.model, weights.optimizer)

    def load_weights(self, run: Any, iteration: int) -> None:
        """Load checkpoint ``iteration`` into ``run.model`` and ``run.optimizer`` (a model-only
        checkpoint leaves the optimizer as it is)."""
        self.weights.load_weights(run, iteration)

    def remove(self, run: Any, iteration: int) -> None:
        """Remove checkpoint ``iteration`` of ``run``.

        Raises:
            CheckpointNotFoundError: not stored.
        """
        self.weights.remove(run, iteration)

    def retrieve_best(self, run: Any, dataset: Any, criterion: str) -> int:
        """The iteration with the best stored score on ``dataset`` (a name or DaCapo dataset)
        by ``criterion``, in the criterion's own direction.

        Raises:
            NoScoreError: no non-NaN score (a ``ValueError``).
        """
        return self.stats.best_validation_score(run, dataset, criterion).iteration

    def store_best(self, run: Any, iteration: int, dataset: Any, criterion: str) -> None:
        """DaCapo's ``LocalWeightsStore.store_best``: nothing to record, since the best checkpoint
        is always derived from the stored scores; checks that the checkpoint exists.

        Raises:
            CheckpointNotFoundError: checkpoint ``iteration`` is not stored.
        """
        self.weights.checkpoint_info(run, iteration)

    def _retrieve_weights(self, run: Any, key: Any) -> DacapoWeights:
        """DaCapo's start-from-a-run lookup: ``key`` is an iteration (``"5000"`` or ``5000``) or
        a criterion, meaning the best checkpoint by that criterion on the run's only
        validation dataset.

        Raises:
            CheckpointNotFoundError: no such checkpoint, or the criterion names no single dataset.
        """
        if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
            return self.retrieve_weights(run, int(key))
        criterion = check_name(key, "criterion")
        datasets = sorted({s.dataset for s in self.stats.retrieve_validation_scores(run, criterion=criterion)})
        if len(datasets) != 1:
            raise CheckpointNotFoundError(
                f"run {run_name_of(run)!r}: {criterion!r} is not an iteration, and as a criterion it "
                f"names no single validation dataset (scored on: {datasets or 'none'})"
            )
        try:
            iteration = self.stats.best_validation_score(run, datasets[0], criterion).iteration
        except NoScoreError as error:
            raise CheckpointNotFoundError(str(error)) from error
        return self.retrieve_weights(run, iteration)

    def _load_best(self, run: Any, criterion: str) -> None:
        """Load the model part of :meth:`_retrieve_weights` ``(run, criterion)`` into ``run.model``."""
        run.model.load_state_dict(self._retrieve_weights(run, criterion).model)


# ---- stats ----------------------------------------------------------------------------------------


@dataclass
class _RunState:
    """What this process knows of one run in one stats store (``None``: not known yet)."""

    trained_until: int | None = None
    validated: set[int] | None = None
    layout: ScoreLayout | None = None


class _StoreState:
    """Shared by every adapter of one dacapo-store stats store in this process: per run, what
    is stored, and which DaCapo score entries (by identity) mirror stored rows, with the
    layout their positions follow."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.runs: dict[str, _RunState] = {}
        self._mirrored: dict[int, tuple[weakref.ref, str, ScoreLayout]] = {}

    def run(self, name: str) -> _RunState:
        return self.runs.setdefault(name, _RunState())

    def mark(self, entry: Any, run: str, layout: ScoreLayout) -> None:
        """Remember that ``entry`` holds exactly what is stored for its iteration of ``run``."""
        key = id(entry)

        def forget(ref: weakref.ref, key: int = key) -> None:
            if self._mirrored.get(key, (None,))[0] is ref:
                del self._mirrored[key]

        self._mirrored[key] = (weakref.ref(entry, forget), run, layout)

    def mirror_layout(self, entry: Any, run: str) -> ScoreLayout | None:
        """The layout of ``entry`` if it mirrors stored rows of ``run``, else ``None``."""
        found = self._mirrored.get(id(entry))
        if found is None or found[0]() is not entry or found[1] != run:
            return None
        return found[2]


_STATES: "weakref.WeakKeyDictionary[StatsStore, _StoreState]" = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def _state_of(stats: StatsStore) -> _StoreState:
    with _STATES_LOCK:
        if stats not in _STATES:
            _STATES[stats] = _StoreState()
        return _STATES[stats]


def _subsample(items: Sequence[Any], divisor: int) -> list[Any]:
    """DaCapo's subsampling: iterations divisible by ``divisor``, and always the last one."""
    kept = [item for item in items if item.iteration % divisor == 0]
    if items and (not kept or kept[-1] is not items[-1]):
        kept.append(items[-1])
    return kept


def _number(value: Any) -> float:
    """A loss or time as a float (``None`` is NaN)."""
    return math.nan if value is None else float(value)


class DacapoStatsStore(DacapoStatsStoreBase):
    """DaCapo's ``StatsStore`` (and the extra methods and arguments of its ``MongoStatsStore``)
    on a dacapo-store stats store.

    Validation scores are stored one row per (iteration, dataset, parameter set, criterion),
    with the criterion's direction from DaCapo's evaluation scores and the parameter set as
    JSON, so that dacapo-store's own API, ``retrieve_best`` and CLI read them. To hand them
    back in DaCapo's nested form, the run's layout comes from the last ``ValidationScores``
    stored in this process, else from ``layout_source`` (by default, the run config in the
    config store DaCapo's options designate), else from the stored rows themselves (names
    sorted; logged as a warning).

    Args:
        stats: where training stats and validation scores are stored.
        layout_source: run name -> layout in DaCapo's order, or ``None``.
    """

    def __init__(self, stats: StatsStore, layout_source: LayoutSource = layout_from_dacapo_options) -> None:
        self.stats = stats
        self.layout_source = layout_source
        self._state = _state_of(stats)

    def __repr__(self) -> str:
        return f"DacapoStatsStore({self.stats!r})"

    # ---- training stats ----

    def store_training_stats(self, run_name: Any, stats: TrainingStats) -> None:
        """Store the run's ``TrainingStats``: the iterations after those stored, or, if the
        object ends at or before the stored stats (a resume that went back, a restart), all of
        it in place of the stored stats."""
        name = run_name_of(run_name)
        until = stats.trained_until()
        with self._state.lock:
            run = self._state.run(name)
            stored_until = run.trained_until if run.trained_until is not None else self._read_trained_until(name)
            if until == 0:
                run.trained_until = stored_until
                return
            start = stored_until
            if stored_until > 0 and until <= stored_until:
                logger.warning("replacing the stored training stats of run %r (trained until %d) by %d iterations",
                               name, stored_until, until)
                self.stats.delete_training_stats(name)
                start = 0
            rows = [
                TrainingIterationStats(s.iteration, _number(s.loss), _number(s.time))
                for s in stats.iteration_stats
                if s.iteration >= start
            ]
            self.stats.store_training_stats(name, rows)
            run.trained_until = until

    def retrieve_training_stats(self, run_name: Any, subsample: bool = False) -> TrainingStats:
        """The run's training stats as DaCapo's ``TrainingStats`` (empty if none). With
        ``subsample``, about a thousand evenly spaced iterations and the last one."""
        name = run_name_of(run_name)
        rows = self.stats.retrieve_training_stats(name)
        with self._state.lock:
            self._state.run(name).trained_until = rows[-1].iteration + 1 if rows else 0
        items = [DacapoIterationStats(iteration=r.iteration, loss=r.loss, time=r.time) for r in rows]
        if subsample and items:
            items = _subsample(items, max(1, (items[-1].iteration + 999) // 1000))
        return TrainingStats(items)

    def delete_training_stats(self, run_name: Any) -> None:
        """Delete the run's training stats."""
        name = run_name_of(run_name)
        with self._state.lock:
            self.stats.delete_training_stats(name)
            self._state.run(name).trained_until = 0

    def _read_trained_until(self, name: str) -> int:
        rows = self.stats.retrieve_training_stats(name)
        return rows[-1].iteration + 1 if rows else 0

    # ---- validation scores ----

    def store_validation_iteration_scores(self, run_name: Any, validation_scores: ValidationScores) -> None:
        """Store the run's ``ValidationScores``: the iterations not stored yet (and any
        validated again), or, if the stored scores go beyond the object's last iteration, the
        whole object in place of the stored scores (DaCapo's rule).

        A dataset whose list of parameter sets is shorter than the run's (DaCapo leaves out a
        failed evaluation) cannot be matched to its parameter sets: it is skipped, with a
        warning, rather than stored under the wrong ones.
        """
        name = run_name_of(run_name)
        layout = layout_of(validation_scores)
        entries = list(validation_scores.scores)
        until = validation_scores.validated_until()
        with self._state.lock:
            run = self._state.run(name)
            run.layout = layout
            stored = run.validated if run.validated is not None else self._read_validated(name)
            if stored and max(stored) + 1 > until:
                logger.warning("replacing the stored validation scores of run %r (validated until %d) by "
                               "those until %d", name, max(stored) + 1, until)
                self.stats.delete_validation_scores(name)
                stored = set()
                pending = entries
            else:
                pending = [entry for entry in entries if self._state.mirror_layout(entry, name) is None]
            for entry in pending:
                entry_layout = self._state.mirror_layout(entry, name) or layout
                self._write_entry(name, entry, entry_layout)
                self._state.mark(entry, name, entry_layout)
                stored.add(entry.iteration)
            run.validated = stored

    def retrieve_validation_iteration_scores(
        self, run_name: Any, subsample: bool = False, validation_interval: int | None = None
    ) -> list[ValidationIterationScores]:
        """The run's validation scores as DaCapo's ``ValidationIterationScores``, by
        iteration; a score that is not stored is NaN. With ``subsample``, iterations spaced by a
        multiple of ``validation_interval`` (default 1), and the last one."""
        name = run_name_of(run_name)
        rows = self.stats.retrieve_validation_scores(name)
        with self._state.lock:
            run = self._state.run(name)
            run.validated = {row.iteration for row in rows}
            if not rows:
                return []
            if run.layout is None:
                run.layout = self.layout_source(name)
            layout = run.layout
            if layout is None:
                layout = ScoreLayout.from_scores(rows)
                logger.warning(
                    "run %r: DaCapo's order of datasets, parameters and criteria is unknown (no run "
                    "config); returning its validation scores in name order", name
                )
            entries = [ValidationIterationScores(iteration, nested) for iteration, nested in layout.nest(rows)]
            for entry in entries:
                self._state.mark(entry, name, layout)
        if subsample and entries:
            interval = validation_interval or 1
            divisor = (entries[-1].iteration + 999) // 1000
            entries = _subsample(entries, max(divisor - divisor % interval, interval))
        return entries

    def delete_validation_scores(self, run_name: Any) -> None:
        """Delete the run's validation scores (DaCapo's ``MongoStatsStore`` has this too)."""
        name = run_name_of(run_name)
        with self._state.lock:
            self.stats.delete_validation_scores(name)
            self._state.run(name).validated = set()

    def _read_validated(self, name: str) -> set[int]:
        return {row.iteration for row in self.stats.retrieve_validation_scores(name)}

    def _write_entry(self, name: str, entry: ValidationIterationScores, layout: ScoreLayout) -> None:
        groups, skipped = layout.split(entry.scores)
        for reason in skipped:
            logger.warning("run %r, iteration %d: validation scores not stored (%s)", name, entry.iteration, reason)
        for group in groups:
            self.stats.store_validation_scores(
                name, entry.iteration, group.dataset, group.scores, layout.higher_is_better, group.parameters
            )
