"""The demo run: a small 2D U-Net learning binary segmentation of noisy synthetic disks."""

from __future__ import annotations

from .plugins import BinarySegmentationConfig, GradientTrainerConfig, SyntheticDataSplitConfig, UNetConfig
from .run_config import RunConfig

DEMO_RUN_NAME = "demo"
DEMO_ITERATIONS = 600
DEMO_CHECKPOINTS = 6
"""The demo stores and validates this many checkpoints (fewer if it has fewer iterations)."""


def demo_run_config(name: str = DEMO_RUN_NAME, iterations: int = DEMO_ITERATIONS) -> RunConfig:
    """The demo's run config: ``iterations`` of training, validated ``DEMO_CHECKPOINTS`` times.

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
        validation_interval=max(1, iterations // DEMO_CHECKPOINTS),
    )
