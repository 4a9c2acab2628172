"""The training study's two axes on the plain deep CNN (He init, ReLU, SGD with momentum 0.9):

batch size: BatchNorm vs GroupNorm vs LayerNorm vs no norm at batch sizes 2, 4, 16, 64, the same
  number of images seen by every cell and the learning rate scaled linearly with the batch (Goyal
  et al.'s rule), the comparison of Wu & He's GroupNorm paper: BatchNorm's statistics come from
  the batch, so small batches make them noisy (and eval, on running statistics, differs from
  training); the per-sample norms do not care.
learning rate: with and without BatchNorm at 1x, 5x and 30x the base rate (Ioffe & Szegedy's
  BN-x5 and BN-x30): where the un-normalised network diverges and the normalised one still trains.

Per cell: final test accuracy, steps and images to the target accuracy, divergence.
"""
from typing import Dict

import torch

from .common.progress import progress_bar
from .common.results import json_config
from .study_cell import run_one

BATCH_SIZES = (2, 4, 16, 64)
BATCH_NORMS = ("fused", "group_norm", "layer_norm", "none")
LR_NORMS = ("fused", "none")
LR_MULTIPLIERS = (1, 5, 30)
# SGD rate at batch 64; the batch axis scales it by batch / 64.
BASE_LR, BASE_BATCH, MOMENTUM = 0.01, 64, 0.9

# Quick: a few thousand images per cell (the README's `make bench` minutes); full: one epoch.
QUICK = {"train_images": 2048, "eval_images": 1000, "evals_per_run": 4, "target": 0.65, "seeds": (0,)}
FULL = {"train_images": None, "eval_images": 10000, "evals_per_run": 10, "target": 0.85, "seeds": (0, 1, 2)}


def sgd(lr: float):
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=MOMENTUM)


def _cell(norm, batch_size, lr, seed, data, device, config) -> Dict:
    steps = data.train_x.shape[0] // batch_size
    run = run_one("cnn", "kaiming", norm, "relu", seed, data, device, 1, config["eval_images"],
                  max(1, steps // config["evals_per_run"]), config["target"],
                  batch_size=batch_size, make_optimizer=sgd(lr))
    run.update(batch_size=batch_size, lr=lr, grad_norms=None,
               images_to_target=None if run["steps_to_target"] is None else run["steps_to_target"] * batch_size)
    return run


def run_axes(data, device, config: Dict, progress: bool = True) -> Dict:
    """Both axes; data holds the images every cell sees (config['train_images'] of them)."""
    cells = [("batch", norm, batch, BASE_LR * batch / BASE_BATCH, seed)
             for norm in BATCH_NORMS for batch in BATCH_SIZES for seed in config["seeds"]]
    cells += [("lr", norm, BASE_BATCH, BASE_LR * mult, seed)
              for norm in LR_NORMS for mult in LR_MULTIPLIERS for seed in config["seeds"]]
    result = {"batch_axis": [], "lr_axis": [], "base_lr": BASE_LR, "base_batch": BASE_BATCH,
              "momentum": MOMENTUM, "config": json_config(config)}
    for axis, norm, batch, lr, seed in progress_bar(cells, desc="study axes", enabled=progress):
        run = _cell(norm, batch, lr, seed, data, device, config)
        if axis == "lr":
            run["lr_multiplier"] = lr / BASE_LR
        result[f"{axis}_axis"].append(run)
    return result
