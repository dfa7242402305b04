"""DaCapo's validation scores as dacapo-store score rows and back, without importing DaCapo.

DaCapo keeps one iteration's validation scores as a nested list,
``scores[dataset][parameter set][criterion]``. The positions mean something only together with
the run's *layout*: its validation datasets, its post-processing parameter sets and its
evaluator's criteria, in DaCapo's order (DaCapo itself stores only the nested numbers).
dacapo-store keeps one row per score, named by dataset, parameters (JSON) and criterion, with
the criterion's direction. A :class:`ScoreLayout` translates one form into the other; the
DaCapo integration builds layouts from DaCapo's objects, the importer from DaCapo's configs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..checks import parameters_key
from ..records import ValidationScore

Nested = list[list[list[float]]]
"""One iteration's scores as DaCapo nests them: ``[dataset][parameter set][criterion]``."""

LayoutSource = Callable[[str], "ScoreLayout | None"]
"""Run name -> the run's :class:`ScoreLayout` in DaCapo's order, or ``None`` if unknown."""


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON data, for post-processing parameters.

    Integers and finite reals become ``int``/``float`` (numpy scalars included), infinities and
    NaN become the strings ``"inf"``, ``"-inf"``, ``"nan"``, tuples become lists, mapping keys
    strings, and anything else (a path, a coordinate class) its ``str``.
    """
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else str(number)
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return str(value)


def score_value(value: Any) -> float:
    """A DaCapo score as a float: ``None`` (an undefined score) is NaN.

    Raises:
        TypeError: not a real number.
    """
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"a validation score must be a real number, got {type(value).__name__}: {value!r}")
    return float(value)


@dataclass(frozen=True)
class ScoreGroup:
    """The scores of one (iteration, dataset, parameter set): criterion -> score."""

    dataset: str
    parameters: Mapping[str, Any]
    scores: dict[str, float]


@dataclass(frozen=True)
class ScoreLayout:
    """What the positions of DaCapo's nested scores mean, for one run.

    Attributes:
        datasets: validation dataset names, in DaCapo's order.
        parameters: post-processing parameter sets as JSON objects, in DaCapo's order.
        criteria: the evaluator's criteria, in DaCapo's order.
        higher_is_better: criterion -> direction (from DaCapo's evaluation scores).
    """

    datasets: tuple[str, ...]
    parameters: tuple[Mapping[str, Any], ...]
    criteria: tuple[str, ...]
    higher_is_better: Mapping[str, bool]

    def split(self, nested: Sequence[Any]) -> tuple[list[ScoreGroup], list[str]]:
        """Split one iteration's nested scores into groups of rows.

        DaCapo leaves out a parameter set whose evaluation failed, so a dataset's list can be
        shorter than the layout: its positions then cannot be told apart, and that dataset is
        skipped rather than stored under the wrong parameters.

        Returns:
            The groups, and one message per skipped part (empty when everything fitted).

        Raises:
            TypeError: a score that is not a real number (``None`` is NaN).
        """
        groups, skipped = [], []
        if len(nested) != len(self.datasets):
            return [], [f"{len(nested)} dataset entries for {len(self.datasets)} validation datasets"]
        for dataset, per_parameters in zip(self.datasets, nested, strict=True):
            if len(per_parameters) != len(self.parameters):
                skipped.append(
                    f"dataset {dataset!r}: {len(per_parameters)} parameter entries for "
                    f"{len(self.parameters)} parameter sets"
                )
                continue
            for parameters, values in zip(self.parameters, per_parameters, strict=True):
                if len(values) != len(self.criteria):
                    skipped.append(
                        f"dataset {dataset!r}, parameters {parameters_key(parameters)}: "
                        f"{len(values)} scores for {len(self.criteria)} criteria"
                    )
                    continue
                scores = {criterion: score_value(value) for criterion, value in zip(self.criteria, values, strict=True)}
                groups.append(ScoreGroup(dataset, parameters, scores))
        return groups, skipped

    def nest(self, scores: Iterable[ValidationScore]) -> list[tuple[int, Nested]]:
        """Arrange stored score rows as DaCapo's nested scores, one entry per iteration.

        A position without a stored score is NaN; rows whose dataset, parameters or criterion
        the layout does not know are left out, and so is an iteration without any known row.

        Returns:
            ``(iteration, nested)`` pairs by increasing iteration.
        """
        dataset_index = {name: i for i, name in enumerate(self.datasets)}
        parameters_index = {parameters_key(p): j for j, p in enumerate(self.parameters)}
        criterion_index = {name: k for k, name in enumerate(self.criteria)}
        nested: dict[int, Nested] = {}
        for score in scores:
            i = dataset_index.get(score.dataset)
            j = parameters_index.get(parameters_key(score.parameters))
            k = criterion_index.get(score.criterion)
            if i is None or j is None or k is None:
                continue
            if score.iteration not in nested:
                nested[score.iteration] = [
                    [[math.nan] * len(self.criteria) for _ in self.parameters] for _ in self.datasets
                ]
            nested[score.iteration][i][j][k] = score.value
        return sorted(nested.items())

    @classmethod
    def from_scores(cls, scores: Iterable[ValidationScore]) -> "ScoreLayout":
        """A layout that covers every stored row, in a canonical order: datasets and criteria
        by name, parameter sets by their ``id`` (DaCapo numbers them in order), then by JSON.

        For when DaCapo's own order is unknown (no run config to read it from).
        """
        datasets: set[str] = set()
        parameters: dict[str, Mapping[str, Any]] = {}
        directions: dict[str, bool] = {}
        for score in scores:
            datasets.add(score.dataset)
            parameters.setdefault(parameters_key(score.parameters), score.parameters)
            directions.setdefault(score.criterion, score.higher_is_better)

        def parameters_order(item: tuple[str, Mapping[str, Any]]) -> tuple:
            key, value = item
            identifier = value.get("id")
            numbered = isinstance(identifier, int) and not isinstance(identifier, bool)
            return (not numbered, identifier if numbered else 0, key)

        return cls(
            datasets=tuple(sorted(datasets)),
            parameters=tuple(value for _, value in sorted(parameters.items(), key=parameters_order)),
            criteria=tuple(sorted(directions)),
            higher_is_better=directions,
        )
