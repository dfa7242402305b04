"""The demo run: a small 2D U-Net learning binary segmentation of noisy synthetic disks."""

from __future__ import annotations

from .plugins import BinarySegmentationConfig, GradientTrainerConfig, SyntheticDataSplitConfig, UNetConfig
from .run_config import RunConfig

DEMO_RUN_NAME = "demo"
DEMO_ITERATIONS = 600
DEMO_CHECKPOINTS = 6
"""The demo stores and validates this many checkpoints (fewer if it has fewer iterations)."""


def round_interval(iterations: int, checkpoints: int = DEMO_CHECKPOINTS) -> int:
    """The smallest round number (1, 2, 2.5 or 5 times a power of ten, and whole) that splits
    ``iterations`` into at most ``checkpoints`` intervals: 600 -> 100, 250 -> 50, 1000 -> 200."""
    target = iterations / checkpoints
    power = 1
    while True:
        for factor in (1, 2, 2.5, 5):
            step = factor * power
            if step == int(step) and step >= target:
                return int(step)
        power *= 10


def demo_run_config(name: str = DEMO_RUN_NAME, iterations: int = DEMO_ITERATIONS) -> RunConfig:
    """The demo's run config: ``iterations`` of training, validated and stored at round
    iterations (at most ``DEMO_CHECKPOINTS`` of them, see :func:`round_interval`) and at the end.

    Raises:
        ConfigError: a bad name, or ``iterations < 1``.
    """
    return RunConfig(
        name=name,
        task_config=BinarySegmentationConfig(thresholds=(0.3, 0.5, 0.7)),
        architecture_config=UNetConfig(dims=2, num_fmaps=8, fmap_inc_factor=2, depth=3),
        trainer_config=GradientTrainerConfig(
            optimizer="adam", learning_rate=1e-3, batch_size=4, input_shape=(64, 64), seed=0
        ),
        datasplit_config=SyntheticDataSplitConfig(
            shape=(128, 128), num_train=2, num_validate=2, num_objects=24, noise=1.0, seed=0
        ),
        num_iterations=iterations,
        validation_interval=round_interval(iterations),
    )
