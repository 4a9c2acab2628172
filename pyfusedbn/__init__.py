"""pyfusedbn: fused BatchNorm + activation (+ residual) for PyTorch, forward and backward."""
from ._ops import backends
from .activations import ACTIVATION_NAMES
from .batch_norm import batch_norm_act
from .batch_norm_modules import BatchNormAct1d, BatchNormAct2d, BatchNormAct3d
from .conversion import ConversionReport, convert, fold, revert
from .group_norm import group_norm_act, instance_norm_act, layer_norm_act_2d
from .group_norm_modules import (GroupNormAct, InstanceNormAct1d, InstanceNormAct2d,
                                 InstanceNormAct3d, LayerNormAct2d)
from .sync_batchnorm import SyncBatchNormAct, convert_sync_batchnorm

__all__ = [
    "ACTIVATION_NAMES",
    "BatchNormAct1d",
    "BatchNormAct2d",
    "BatchNormAct3d",
    "ConversionReport",
    "GroupNormAct",
    "InstanceNormAct1d",
    "InstanceNormAct2d",
    "InstanceNormAct3d",
    "LayerNormAct2d",
    "SyncBatchNormAct",
    "backends",
    "batch_norm_act",
    "convert",
    "convert_sync_batchnorm",
    "fold",
    "group_norm_act",
    "instance_norm_act",
    "layer_norm_act_2d",
    "revert",
]
__version__ = "0.1.0"
