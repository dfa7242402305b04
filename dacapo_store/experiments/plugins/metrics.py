"""Scores of a binary segmentation against its ground truth."""

from __future__ import annotations

import numpy as np


def confusion(prediction: np.ndarray, gt: np.ndarray) -> tuple[int, int, int, int]:
    """Return ``(tp, fp, fn, tn)`` voxel counts of two boolean masks of equal shape.

    Raises:
        ValueError: the shapes differ.
    """
    if prediction.shape != gt.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from ground truth shape {gt.shape}")
    prediction, gt = prediction.astype(bool), gt.astype(bool)
    tp = int(np.count_nonzero(prediction & gt))
    fp = int(np.count_nonzero(prediction & ~gt))
    fn = int(np.count_nonzero(~prediction & gt))
    return tp, fp, fn, prediction.size - tp - fp - fn


def f1_score(tp: int, fp: int, fn: int) -> float:
    """Dice/F1 of the foreground; 1.0 when both masks are empty."""
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def iou(tp: int, fp: int, fn: int) -> float:
    """Intersection over union of the foreground; 1.0 when both masks are empty."""
    return 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)


def variation_of_information(tp: int, fp: int, fn: int, tn: int) -> float:
    """``H(prediction | gt) + H(gt | prediction)`` in bits, of the two labellings
    (foreground/background); 0.0 for identical masks."""
    joint = np.array([[tn, fn], [fp, tp]], dtype=np.float64)  # rows: predicted, columns: gt
    joint /= joint.sum()
    entropy_joint = _entropy(joint.ravel())
    return max(0.0, 2 * entropy_joint - _entropy(joint.sum(axis=0)) - _entropy(joint.sum(axis=1)))


def _entropy(probabilities: np.ndarray) -> float:
    nonzero = probabilities[probabilities > 0]
    return float(-(nonzero * np.log2(nonzero)).sum())
