"""The training study's two axes (SGD with momentum 0.9, He init, ReLU):

batch size: BatchNorm vs GroupNorm vs LayerNorm vs no norm at batch sizes from 2 to 64, the same
  images seen by every cell and the learning rate scaled linearly with the batch (Goyal et al.'s
  rule), the comparison of Wu & He's GroupNorm paper: BatchNorm's statistics come from the batch,
  so small batches make them noisy (and eval, on running statistics, differs from training: each
  BatchNorm cell is also evaluated in training mode, on test batches of its own size); the
  per-sample norms do not care.
learning rate: with and without BatchNorm at 1x, 5x and 30x the base rate (Ioffe & Szegedy's
  BN-x5 and BN-x30): where the un-normalised network diverges and the normalised one still trains.

Both axes train a deep MLP (8 hidden layers of width 64): on 2 CPU cores a batch-2 run of a deep
CNN over the same images costs ~10x more, and the axes need 3 seeds per cell to tell effects
from noise. Per cell: final test accuracy (eval mode), steps and images to the target accuracy,
divergence.

quick (`make bench`): 4096 images per cell, batches 2 / 8 / 64, 3 seeds.
full, the "paper" mode sized for one 2-core machine (~15 minutes alone): 16384 images per cell,
  batches 2 / 4 / 8 / 16 / 64, 3 seeds, 10,000 test images.
"""
from typing import Dict

import torch

from .common.progress import progress_bar
from .common.results import json_config
from .study_cell import run_one

BATCH_NORMS = ("fused", "group_norm", "layer_norm", "none")
LR_NORMS = ("fused", "none")
# SGD rate at batch 64; the batch axis scales it by batch / 64.
BASE_LR, BASE_BATCH, MOMENTUM = 0.02, 64, 0.9
AXES_MODEL, AXES_ARCH = "mlp", {"depth": 8, "width": 64}  # 64: GroupNorm's 8 groups divide it

QUICK = {"train_images": 4096, "eval_images": 2000, "evals_per_run": 4, "target": 0.70,
         "seeds": (0, 1, 2), "batch_sizes": (2, 8, 64), "lr_multipliers": (1, 5, 30)}
FULL = {"train_images": 16384, "eval_images": 10000, "evals_per_run": 8, "target": 0.80,
        "seeds": (0, 1, 2), "batch_sizes": (2, 4, 8, 16, 64), "lr_multipliers": (1, 5, 30)}


def sgd(lr: float):
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=MOMENTUM)


def _cell(norm, batch_size, lr, seed, data, device, config) -> Dict:
    steps = data.train_x.shape[0] // batch_size
    run = run_one(AXES_MODEL, "kaiming", norm, "relu", seed, data, device, 1,
                  config["eval_images"], max(1, steps // config["evals_per_run"]),
                  config["target"], batch_size=batch_size, make_optimizer=sgd(lr),
                  arch=AXES_ARCH, batch_statistics_eval=True)
    run.update(batch_size=batch_size, lr=lr, grad_norms=None,
               images_to_target=None if run["steps_to_target"] is None else run["steps_to_target"] * batch_size)
    return run


def run_axes(data, device, config: Dict, progress: bool = True) -> Dict:
    """Both axes; data holds the images every cell sees (config['train_images'] of them)."""
    cells = [("batch", norm, batch, BASE_LR * batch / BASE_BATCH, seed)
             for norm in BATCH_NORMS for batch in config["batch_sizes"] for seed in config["seeds"]]
    cells += [("lr", norm, BASE_BATCH, BASE_LR * mult, seed)
              for norm in LR_NORMS for mult in config["lr_multipliers"] for seed in config["seeds"]]
    result = {"batch_axis": [], "lr_axis": [], "base_lr": BASE_LR, "base_batch": BASE_BATCH,
              "momentum": MOMENTUM, "model": AXES_MODEL, "arch": json_config(AXES_ARCH),
              "config": json_config(config)}
    for axis, norm, batch, lr, seed in progress_bar(cells, desc="study axes", enabled=progress):
        run = _cell(norm, batch, lr, seed, data, device, config)
        if axis == "lr":
            run["lr_multiplier"] = lr / BASE_LR
        result[f"{axis}_axis"].append(run)
    return result
