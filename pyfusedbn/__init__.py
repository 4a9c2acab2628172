"""pyfusedbn: fused BatchNorm + activation (+ residual) for PyTorch, forward and backward."""
from ._ops import backends
from .activations import ACTIVATION_NAMES
from .convert import ConversionReport, convert, fold, revert
from .functional import batch_norm_act
from .modules import BatchNormAct1d, BatchNormAct2d, BatchNormAct3d
from .sync_batchnorm import SyncBatchNormAct, convert_sync_batchnorm

__all__ = [
    "ACTIVATION_NAMES",
    "BatchNormAct1d",
    "BatchNormAct2d",
    "BatchNormAct3d",
    "ConversionReport",
    "SyncBatchNormAct",
    "backends",
    "batch_norm_act",
    "convert",
    "convert_sync_batchnorm",
    "fold",
    "revert",
]
__version__ = "0.1.0"
