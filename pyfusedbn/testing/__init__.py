"""Tools to check and measure fused layers, for tests and benchmarks (pyfusedbn's own and yours).

- count_ops(fn): (total, {op: count}) of the aten:: and pyfusedbn:: ops one call of fn
  dispatches (torch profiler, CPU); on a GPU each is at least one kernel launch.
- layer_steps(): one training forward+backward of BatchNormAct2d(16, relu) and of
  nn.BatchNorm2d + nn.ReLU on the same (8, 16, 4, 4) input, as {"fused": fn, "eager": fn}.
- SavedTensors: context manager recording what autograd saves for backward inside it, by storage
  (`nbytes`: the activation memory a training step holds; `holds(t)`: whether t's storage is
  saved).
- zoo: torchvision and timm classifiers (random init, nothing downloaded): ZOO, import_libraries,
  build, is_batch_norm, count_batch_norms, and the float64 training step (train_step,
  largest_difference) a converted model must reproduce.

Example: how many ops a converted model's training step dispatches, and what it saves::

    from pyfusedbn.testing import SavedTensors, count_ops
    total, per_op = count_ops(lambda: model(x).sum().backward())
    with SavedTensors() as saved:
        loss = model(x).sum()
    print(total, saved.nbytes)
"""
from . import zoo
from .op_count import LAYER_SHAPE, count_ops, layer_steps
from .saved_tensors import SavedTensors

__all__ = ["LAYER_SHAPE", "SavedTensors", "count_ops", "layer_steps", "zoo"]
