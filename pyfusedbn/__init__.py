"""pyfusedbn: fused BatchNorm + activation (+ residual) for PyTorch, forward and backward."""
from ._ops import backends
from .activations import ACTIVATION_NAMES
from .convert import ConversionReport, convert, fold, revert
from .functional import batch_norm_act
from .group_norm import group_norm_act
from .group_norm_modules import (GroupNormAct, InstanceNormAct1d, InstanceNormAct2d,
                                 InstanceNormAct3d, LayerNormAct2d)
from .instance_layer_norm import instance_norm_act, layer_norm_act_2d
from .modules import BatchNormAct1d, BatchNormAct2d, BatchNormAct3d
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
