"""The built-in plug-ins: U-Net, binary segmentation, trainer, datasplits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dacapo_store.experiments import (
    BinarySegmentationConfig,
    GradientTrainerConfig,
    NpyDataSplitConfig,
    SyntheticDataSplitConfig,
    UNetConfig,
)
from dacapo_store.experiments.plugins.metrics import confusion, f1_score, iou, variation_of_information


@pytest.mark.parametrize(
    ("config", "spatial"),
    [
        (UNetConfig(dims=2, num_fmaps=2, depth=3), (16, 24)),
        (UNetConfig(dims=3, num_fmaps=2, depth=2, num_fmaps_out=3), (4, 8, 6)),
        (UNetConfig(dims=2, num_fmaps=2, depth=1), (5, 7)),
    ],
)
def test_unet_keeps_spatial_size(config, spatial):
    unet = config.build()
    out = unet(torch.zeros(2, config.in_channels, *spatial))
    assert out.shape == (2, config.num_fmaps_out or config.num_fmaps, *spatial)
    assert unet.downsample_factor == 2 ** (config.depth - 1)


@pytest.mark.parametrize("dims", [2, 3])
def test_task_model_accepts_any_size_and_predicts_probabilities(dims):
    task = BinarySegmentationConfig().build()
    model = task.create_model(UNetConfig(dims=dims, num_fmaps=2, depth=3).build())
    raw = torch.randn(1, *([7] * dims))  # not a multiple of the downsample factor 4
    assert model(raw.unsqueeze(0)).shape == (1, 1, *([7] * dims))
    prediction = task.predict(model, raw)
    assert prediction.shape == (7,) * dims
    assert ((prediction >= 0) & (prediction <= 1)).all()
    assert {key.split(".")[0] for key in model.state_dict()} == {"architecture", "head"}


def test_metrics_on_known_masks():
    gt = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    prediction = np.array([1, 1, 1, 0, 1, 0, 0, 0], dtype=bool)
    tp, fp, fn, tn = confusion(prediction, gt)
    assert (tp, fp, fn, tn) == (3, 1, 1, 3)
    assert f1_score(tp, fp, fn) == pytest.approx(0.75)
    assert iou(tp, fp, fn) == pytest.approx(0.6)
    # joint distribution (3/8, 1/8, 1/8, 3/8): H(P,G) - H(G) twice
    joint_entropy = -2 * (3 / 8 * math.log2(3 / 8) + 1 / 8 * math.log2(1 / 8))
    assert variation_of_information(tp, fp, fn, tn) == pytest.approx(2 * (joint_entropy - 1.0))
    assert variation_of_information(*confusion(gt, gt)) == 0.0
    assert f1_score(0, 0, 0) == iou(0, 0, 0) == 1.0
    with pytest.raises(ValueError, match="shape"):
        confusion(prediction, gt[:4])


def test_binary_segmentation_scores_and_directions():
    task = BinarySegmentationConfig(thresholds=(0.25, 0.75)).build()
    assert task.parameters == [{"threshold": 0.25}, {"threshold": 0.75}]
    assert task.criteria == {"f1_score": True, "iou": True, "voi": False}
    gt = np.array([[1, 1], [0, 0]])
    prediction = np.array([[0.9, 0.5], [0.1, 0.6]])
    assert task.evaluate(prediction, gt, {"threshold": 0.75}) == pytest.approx(
        {"f1_score": 2 / 3, "iou": 0.5, "voi": variation_of_information(1, 0, 1, 2)}
    )
    assert task.evaluate(prediction, gt, {"threshold": 0.25})["f1_score"] == pytest.approx(0.8)


def test_synthetic_volumes_are_deterministic_and_depend_on_the_seed():
    config = SyntheticDataSplitConfig(shape=(32, 32), num_train=2, num_validate=1, num_objects=4)
    split, again = config.build(), config.build()
    assert [d.name for d in split.train] == ["train_0", "train_1"]
    assert [d.name for d in split.validate] == ["validate_0"]
    assert np.array_equal(split.train[0].raw, again.train[0].raw)
    assert np.array_equal(split.validate[0].gt, again.validate[0].gt)
    assert not np.array_equal(split.train[0].gt, split.train[1].gt)
    reseeded = SyntheticDataSplitConfig(shape=(32, 32), num_objects=4, seed=1).build()
    assert not np.array_equal(split.train[0].gt, reseeded.train[0].gt)
    raw, gt = split.train[0].raw, split.train[0].gt
    assert raw.shape == (1, 32, 32) and raw.dtype == np.float32 and gt.shape == (32, 32)
    assert 0.05 < gt.mean() < 0.6
    assert raw[0][gt > 0].mean() > raw[0][gt == 0].mean() + 0.5


def test_synthetic_3d_volume():
    dataset = SyntheticDataSplitConfig(shape=(8, 12, 12), num_objects=2, radius=(2, 3)).build().train[0]
    assert dataset.raw.shape == (1, 8, 12, 12) and dataset.gt.any()


def test_npy_datasplit_reads_user_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "raw.npy", rng.normal(size=(10, 12)).astype(np.float64))
    np.save(tmp_path / "raw2c.npy", rng.normal(size=(2, 10, 12)).astype(np.float32))
    np.save(tmp_path / "gt.npy", (rng.random((10, 12)) > 0.5).astype(np.uint8))
    monkeypatch.chdir(tmp_path)  # relative paths are relative to the working directory
    split = NpyDataSplitConfig.from_dict(
        {
            "train": [{"name": "one_channel", "raw": "raw.npy", "gt": "gt.npy"}],
            "validate": [{"name": "two_channels", "raw": str(tmp_path / "raw2c.npy"), "gt": "gt.npy"}],
        }
    ).build()
    assert split.train[0].raw.shape == (1, 10, 12) and split.train[0].raw.dtype == np.float32
    assert split.validate[0].raw.shape == (2, 10, 12)
    assert np.array_equal(split.validate[0].gt, np.load("gt.npy"))


def test_npy_datasplit_reports_bad_files(tmp_path):
    np.save(tmp_path / "raw.npy", np.zeros((4, 5)))
    np.save(tmp_path / "gt.npy", np.zeros((4, 6)))
    dataset = NpyDataSplitConfig.from_dict(
        {"train": [{"name": "bad", "raw": str(tmp_path / "raw.npy"), "gt": str(tmp_path / "gt.npy")}]}
    ).build().train[0]
    with pytest.raises(ValueError, match="dataset 'bad': raw shape"):
        dataset.raw
    missing = NpyDataSplitConfig.from_dict(
        {"train": [{"name": "gone", "raw": str(tmp_path / "no.npy"), "gt": str(tmp_path / "gt.npy")}]}
    ).build().train[0]
    with pytest.raises(FileNotFoundError):
        missing.gt


def test_trainer_batches_depend_only_on_seed_and_iteration():
    datasets = SyntheticDataSplitConfig(shape=(24, 24), num_train=3).build().train
    trainer = GradientTrainerConfig(batch_size=3, input_shape=(8, 16), seed=5).build()
    raw, gt = trainer.batch(7, datasets)
    assert raw.shape == (3, 1, 8, 16) and gt.shape == (3, 8, 16)
    again = GradientTrainerConfig(batch_size=3, input_shape=(8, 16), seed=5).build().batch(7, datasets)
    assert np.array_equal(raw, again[0]) and np.array_equal(gt, again[1])
    assert not np.array_equal(raw, trainer.batch(8, datasets)[0])
    with pytest.raises(ValueError, match="cannot give crops of input_shape"):
        GradientTrainerConfig(input_shape=(32, 32)).build().batch(0, datasets)


@pytest.mark.parametrize(("name", "cls"), [("adam", torch.optim.Adam), ("radam", torch.optim.RAdam)])
def test_trainer_builds_the_configured_optimizer(name, cls):
    model = torch.nn.Linear(2, 1)
    optimizer = GradientTrainerConfig(optimizer=name, learning_rate=0.5).build().create_optimizer(model)
    assert type(optimizer) is cls
    assert optimizer.param_groups[0]["lr"] == 0.5
