"""The built-in plug-ins; importing this package registers them.

=============  ======================  ==============================================
kind           type                    config class
=============  ======================  ==============================================
architecture   ``unet``                :class:`.unet.UNetConfig`
task           ``binary_segmentation`` :class:`.binary_segmentation.BinarySegmentationConfig`
trainer        ``gradient``            :class:`.gradient_trainer.GradientTrainerConfig`
datasplit      ``synthetic``           :class:`.synthetic.SyntheticDataSplitConfig`
datasplit      ``npy``                 :class:`.npy.NpyDataSplitConfig`
start          ``checkpoint``          :class:`.checkpoint_start.CheckpointStartConfig`
=============  ======================  ==============================================
"""

from .binary_segmentation import BinarySegmentationConfig
from .checkpoint_start import CheckpointStartConfig
from .gradient_trainer import GradientTrainerConfig
from .npy import NpyDataSplitConfig, NpyDatasetConfig
from .synthetic import SyntheticDataSplitConfig
from .unet import UNetConfig

__all__ = [
    "BinarySegmentationConfig",
    "CheckpointStartConfig",
    "GradientTrainerConfig",
    "NpyDataSplitConfig",
    "NpyDatasetConfig",
    "SyntheticDataSplitConfig",
    "UNetConfig",
]
