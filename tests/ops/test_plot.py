"""The plot is a readable PNG chart: it decodes, has the documented size, and is not blank."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.image import imread

from dacapo_store import NoScoreError, TrainingIterationStats
from dacapo_store.plotting import figure_size_px, plot_run, run_figure

from .conftest import seed_run


def decoded(path) -> np.ndarray:
    image = imread(path)  # raises if the PNG does not decode
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    return image


def test_plot_has_one_panel_per_dataset_criterion_and_one_for_the_loss(ops_store, tmp_path) -> None:
    seed_run(ops_store, iterations=[100, 300, 500, 700, 900])
    ops_store.stats.store_validation_scores("run_a", 500, "test", {"dice": math.nan}, {"dice": True})
    path = tmp_path / "run_a.png"
    size = plot_run(ops_store.stats, "run_a", path)
    assert size == figure_size_px(4) == (1000, 1200)  # val/dice, val/loss, test/dice (NaN only), loss
    image = decoded(path)
    assert image.shape[:2] == (size[1], size[0])
    colours = np.unique((image[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 20  # lines, text, markers: not a blank canvas


def test_a_run_with_only_training_statistics_plots_the_loss(ops_store, tmp_path) -> None:
    ops_store.stats.store_training_stats("fresh", [TrainingIterationStats(i, 1.0 / (i + 1), 0.1) for i in range(200)])
    path = tmp_path / "fresh.png"
    assert plot_run(ops_store.stats, "fresh", path) == (1000, 300)
    assert decoded(path).shape[:2] == (300, 1000)


def test_a_run_with_nothing_to_plot_is_an_error(ops_store, tmp_path) -> None:
    with pytest.raises(NoScoreError, match="nothing|no validation scores"):
        plot_run(ops_store.stats, "empty", tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


def test_the_title_overlaps_no_panel(ops_store) -> None:
    for dataset in ("validate_0", "validate_1"):  # the demo's 7 panels
        for criterion in ("f1_score", "iou", "voi"):
            ops_store.stats.store_validation_scores("seven", 100, dataset, {criterion: 0.5}, {criterion: True})
    figure = run_figure(ops_store.stats, "seven")
    canvas = FigureCanvasAgg(figure)
    canvas.draw()  # lays the figure out as savefig does
    renderer = canvas.get_renderer()
    (title,) = [text.get_window_extent(renderer) for text in figure.texts if text.get_text() == "run seven"]
    first_panel = figure.axes[0]
    assert len(figure.axes) == 7
    for box in (first_panel.title.get_window_extent(renderer), first_panel.get_window_extent(renderer)):
        assert not title.overlaps(box)
