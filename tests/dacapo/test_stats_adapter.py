"""DaCapo's stats store interface on dacapo-store (``DacapoStatsStore``), with DaCapo's own
objects: what it writes, what it hands back, and DaCapo's rules for replacing stored stats."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest

from .conftest import Stores, make_stores, require_dacapo

require_dacapo()

from dacapo.experiments import (  # noqa: E402
    TrainingIterationStats,
    TrainingStats,
    ValidationIterationScores,
    ValidationScores,
)
from dacapo.experiments.tasks.evaluators import DummyEvaluationScores  # noqa: E402
from dacapo.experiments.tasks.post_processors import ThresholdPostProcessorParameters  # noqa: E402

from dacapo_store.integrations.dacapo_adapters import DacapoStatsStore, layout_of  # noqa: E402

RUN = "run"
DATASETS = [SimpleNamespace(name="val_b"), SimpleNamespace(name="val_a")]  # not in name order
PARAMETERS = [ThresholdPostProcessorParameters(id=i, threshold=t) for i, t in enumerate((0.7, 0.3))]
CRITERIA = DummyEvaluationScores.criteria  # frizz_level (higher is better), blipp_score (lower)


def training_stats(iterations, offset: float = 0.0) -> TrainingStats:
    return TrainingStats(
        [TrainingIterationStats(iteration=i, loss=1.0 / (i + 1) + offset, time=0.01) for i in iterations]
    )


def nested(iteration: int, salt: float = 0.0) -> list:
    """Distinct scores per (iteration, dataset, parameters, criterion)."""
    return [
        [[iteration + d / 10 + p / 100 + c / 1000 + salt for c in range(len(CRITERIA))] for p in range(len(PARAMETERS))]
        for d in range(len(DATASETS))
    ]


def validation_scores(entries) -> ValidationScores:
    return ValidationScores(PARAMETERS, DATASETS, DummyEvaluationScores(), scores=list(entries))


def entries(*iterations, salt: float = 0.0) -> list[ValidationIterationScores]:
    return [ValidationIterationScores(i, nested(i, salt)) for i in iterations]


@pytest.fixture
def written(stores: Stores, monkeypatch) -> list[int]:
    """The iteration of every ``store_validation_scores`` call on the dacapo-store stats store."""
    calls: list[int] = []
    original = stores.stats.store_validation_scores

    def spy(run, iteration, *args, **kwargs):
        calls.append(iteration)
        return original(run, iteration, *args, **kwargs)

    monkeypatch.setattr(stores.stats, "store_validation_scores", spy)
    return calls


def adapter(stores: Stores, layout=None) -> DacapoStatsStore:
    """An adapter whose layout source knows ``layout`` (DaCapo's config store stands aside)."""
    return DacapoStatsStore(stores.stats, layout_source=lambda run: layout)


# ---- training stats ----------------------------------------------------------------------------


def test_training_stats_round_trip_and_only_new_iterations_are_written(stores: Stores, monkeypatch) -> None:
    dacapo = adapter(stores)
    assert dacapo.retrieve_training_stats(RUN) == TrainingStats()
    dacapo.store_training_stats(RUN, training_stats(range(100)))
    written: list[int] = []
    original = stores.stats.store_training_stats

    def spy(run, rows):
        written.extend(row.iteration for row in rows)
        return original(run, rows)

    monkeypatch.setattr(stores.stats, "store_training_stats", spy)
    dacapo.store_training_stats(RUN, training_stats(range(150)))
    assert written == list(range(100, 150))
    back = adapter(stores).retrieve_training_stats(RUN)
    assert back == training_stats(range(150)) and back.trained_until() == 150


def test_training_stats_ending_earlier_replace_the_stored_ones(stores: Stores, caplog) -> None:
    """DaCapo's rule: an object that ends at or before the stored stats (a resume from an
    earlier checkpoint, a restart) replaces them."""
    dacapo = adapter(stores)
    dacapo.store_training_stats(RUN, training_stats(range(100)))
    with caplog.at_level(logging.WARNING):
        dacapo.store_training_stats(RUN, training_stats(range(40), offset=5.0))
    assert "replacing the stored training stats" in caplog.text
    assert dacapo.retrieve_training_stats(RUN) == training_stats(range(40), offset=5.0)
    dacapo.store_training_stats(RUN, TrainingStats())  # nothing trained: nothing changes
    assert dacapo.retrieve_training_stats(RUN).trained_until() == 40
    dacapo.delete_training_stats(RUN)
    assert dacapo.retrieve_training_stats(RUN).trained_until() == 0


def test_training_stats_subsample_as_dacapo(tmp_path) -> None:
    """Subsampling is the adapter's (one backend suffices; mongomock is slow at 2,500 rows)."""
    dacapo = adapter(make_stores("local", tmp_path))
    dacapo.store_training_stats(RUN, training_stats(range(2501)))
    sampled = [s.iteration for s in dacapo.retrieve_training_stats(RUN, subsample=True).iteration_stats]
    assert sampled == list(range(0, 2501, 3)) + [2500]


# ---- validation scores -------------------------------------------------------------------------


def test_scores_are_stored_by_name_with_each_criterions_direction(stores: Stores) -> None:
    adapter(stores).store_validation_iteration_scores(RUN, validation_scores(entries(100, 200)))
    rows = stores.stats.retrieve_validation_scores(RUN)
    assert len(rows) == 2 * len(DATASETS) * len(PARAMETERS) * len(CRITERIA)
    for row in rows:
        d = [ds.name for ds in DATASETS].index(row.dataset)
        p = [parameters.id for parameters in PARAMETERS].index(row.parameters["id"])
        c = CRITERIA.index(row.criterion)
        assert row.value == nested(row.iteration)[d][p][c]
        assert row.parameters == {"id": p, "threshold": PARAMETERS[p].threshold}
        assert row.higher_is_better is DummyEvaluationScores.higher_is_better(row.criterion)
    assert stores.stats.best_validation_score(RUN, "val_a", "frizz_level").iteration == 200
    assert stores.stats.best_validation_score(RUN, "val_a", "blipp_score").iteration == 100


def test_scores_come_back_in_dacapos_form_and_order(stores: Stores) -> None:
    stored = validation_scores(entries(100, 200))
    adapter(stores).store_validation_iteration_scores(RUN, stored)
    # from the layout this process saw, and from the run config (a fresh process)
    assert DacapoStatsStore(stores.stats).retrieve_validation_iteration_scores(RUN) == stored.scores
    assert adapter(make_fresh(stores), layout_of(stored)).retrieve_validation_iteration_scores(RUN) == stored.scores


def make_fresh(stores: Stores) -> Stores:
    """The same stores seen from a fresh process: no adapter state is shared with the old ones."""
    from dacapo_store import LocalStatsStore, MongoStatsStore

    if stores.kind == "local":
        stats = LocalStatsStore(stores.stats.basedir)
    else:
        stats = MongoStatsStore(stores.stats.database.client)
    return Stores(stores.kind, stores.weights, stats, stores.location)


def test_without_dacapos_order_scores_come_back_in_name_order_with_a_warning(stores: Stores, caplog) -> None:
    adapter(stores).store_validation_iteration_scores(RUN, validation_scores(entries(100)))
    with caplog.at_level(logging.WARNING):
        (entry,) = adapter(make_fresh(stores), None).retrieve_validation_iteration_scores(RUN)
    assert "returning its validation scores in name order" in caplog.text
    order = [1, 0]  # datasets by name: val_a (DaCapo's second), val_b; parameters by id; criteria by name
    criteria = sorted(range(len(CRITERIA)), key=lambda c: CRITERIA[c])
    expected = nested(100)
    assert entry.scores == [[[expected[d][p][c] for c in criteria] for p in range(len(PARAMETERS))] for d in order]


def test_only_new_entries_are_written_also_by_another_adapter(stores: Stores, written: list[int]) -> None:
    """DaCapo hands over the whole history on every call, through a new adapter each time
    (``validate_run`` creates its own): only the new iteration is written."""
    scores = validation_scores(entries(100))
    adapter(stores).store_validation_iteration_scores(RUN, scores)
    written.clear()
    for iteration in (200, 300):
        scores.add_iteration_scores(ValidationIterationScores(iteration, nested(iteration)))
        adapter(stores).store_validation_iteration_scores(RUN, scores)
    assert set(written) == {200, 300} and len(written) == 2 * len(DATASETS) * len(PARAMETERS)
    # a resumed run: DaCapo reads the history back, adds one iteration, stores it all again
    resumed = validation_scores([])
    resumed.scores = adapter(stores).retrieve_validation_iteration_scores(RUN)
    resumed.add_iteration_scores(ValidationIterationScores(400, nested(400)))
    written.clear()
    adapter(stores).store_validation_iteration_scores(RUN, resumed)
    assert set(written) == {400}


def test_an_older_iteration_validated_again_is_replaced(stores: Stores) -> None:
    dacapo = adapter(stores)
    dacapo.store_validation_iteration_scores(RUN, validation_scores(entries(100, 200)))
    again = validation_scores(dacapo.retrieve_validation_iteration_scores(RUN))
    again.add_iteration_scores(ValidationIterationScores(100, nested(100, salt=0.5)))
    dacapo.store_validation_iteration_scores(RUN, again)
    rows = {
        (r.iteration, r.dataset, r.criterion, r.parameters["id"]): r.value
        for r in stores.stats.retrieve_validation_scores(RUN)
    }
    assert rows[(100, "val_b", "frizz_level", 0)] == nested(100, salt=0.5)[0][0][0]
    assert rows[(200, "val_b", "frizz_level", 0)] == nested(200)[0][0][0]


def test_scores_ending_before_the_stored_ones_replace_them(stores: Stores, caplog) -> None:
    """DaCapo's rule: after a resume from checkpoint 200 the history ends there; the next
    store replaces the stored iterations after it."""
    dacapo = adapter(stores)
    dacapo.store_validation_iteration_scores(RUN, validation_scores(entries(100, 200, 300)))
    resumed = validation_scores(dacapo.retrieve_validation_iteration_scores(RUN))
    resumed.delete_after(200)
    resumed.add_iteration_scores(ValidationIterationScores(250, nested(250)))
    with caplog.at_level(logging.WARNING):
        dacapo.store_validation_iteration_scores(RUN, resumed)
    assert "replacing the stored validation scores" in caplog.text
    assert sorted({r.iteration for r in stores.stats.retrieve_validation_scores(RUN)}) == [100, 250]
    assert dacapo.retrieve_validation_iteration_scores(RUN) == entries(100, 250)
    dacapo.delete_validation_scores(RUN)
    assert dacapo.retrieve_validation_iteration_scores(RUN) == []


def test_a_dataset_with_a_failed_evaluation_is_skipped_not_misfiled(stores: Stores, caplog) -> None:
    """DaCapo leaves a failed parameter set out of a dataset's list, so the positions after
    it shift: that dataset is not stored (a warning says so); the others are."""
    scores = nested(100)
    scores[0] = scores[0][1:]  # val_b: the evaluation with parameters id 0 failed
    with caplog.at_level(logging.WARNING):
        adapter(stores).store_validation_iteration_scores(
            RUN, validation_scores([ValidationIterationScores(100, scores)])
        )
    assert "dataset 'val_b': 1 parameter entries for 2 parameter sets" in caplog.text
    assert {r.dataset for r in stores.stats.retrieve_validation_scores(RUN)} == {"val_a"}


def test_undefined_and_numpy_scores(stores: Stores) -> None:
    scores = nested(100)
    scores[1][0] = [None, np.float32(0.25)]
    adapter(stores).store_validation_iteration_scores(RUN, validation_scores([ValidationIterationScores(100, scores)]))
    rows = {(r.dataset, r.criterion, r.parameters["id"]): r.value for r in stores.stats.retrieve_validation_scores(RUN)}
    assert math.isnan(rows[("val_a", "frizz_level", 0)]) and rows[("val_a", "blipp_score", 0)] == 0.25


def test_validation_subsample_as_dacapo(tmp_path) -> None:
    dacapo = adapter(make_stores("local", tmp_path))
    dacapo.store_validation_iteration_scores(RUN, validation_scores(entries(*range(0, 5001, 500))))
    sampled = dacapo.retrieve_validation_iteration_scores(RUN, subsample=True, validation_interval=500)
    assert [e.iteration for e in sampled] == list(range(0, 5001, 500))
    sampled = dacapo.retrieve_validation_iteration_scores(RUN, subsample=True, validation_interval=1000)
    assert [e.iteration for e in sampled] == [0, 1000, 2000, 3000, 4000, 5000]
