"""Training study: what BatchNorm and initialisation do, on Fashion-MNIST.

    python -m benchmarks.study --quick|--full [--models mlp cnn] [--inits ...] [--norms ...]
                               [--activations ...] [--seeds 0 1 2] [--clip-grad-norm 1.0]

A deep MLP (11 hidden layers of equal width, the usual teaching example), or with --models cnn
also a plain deep CNN (no skips), each for init {N(0,1), PyTorch default, Xavier, He} x {no
BatchNorm, fused BatchNorm} x {sigmoid, tanh, relu} x 3 seeds; Adam 1e-3, batch 64. Per run: test
accuracy during training, steps to reach a target test accuracy (Ioffe & Szegedy's table), per-layer
gradient norms on the first batch (the vanishing-gradient picture), optional gradient clipping.
Before it, the batch-size and learning-rate axes of benchmarks/study_axes.py (--no-axes skips
them). Inputs are normalised with the training set's own mean and std (about 0.2860 / 0.3530).
Tables and sentences: mean ± spread over seeds (benchmarks/study_report.py, study_axes_report.py).

quick (`make bench`): the MLP grid on 12,800 images, one epoch; the axes on 4096 images.
full, the "paper" mode sized for one 2-core machine: the MLP grid on all 60,000 images, one
  epoch; the axes on 16,384 images, batches 2-64. Its committed run: benchmarks/published/study/.
"""
import argparse
import dataclasses
import itertools
from typing import Dict, List

import torch

from . import study_axes, tables
from .common.cli import stage_main
from .common.progress import progress_bar
from .common.results import json_config, save_json
from .data import DEFAULT_DATA_DIR, load_fashion_mnist
from .models import INITS
# build_model: the study's models, for its callers (tests build them); run_one trains one cell.
from .study_cell import BATCH_SIZE, CNN, LR, MLP, MODELS, build_model, run_one  # noqa: F401

STUDY_ACTIVATIONS = ("sigmoid", "tanh", "relu")
STUDY_NORMS = ("none", "fused")

# Quick: the MLP grid, 3 seeds, one epoch of 12,800 images (200 steps). The plain CNN
# (`--models mlp cnn`) is out of quick mode: at 3 seeds its grid does not fit `make bench`'s minutes.
QUICK = {"models": ("mlp",), "seeds": (0, 1, 2), "epochs": 1, "train_images": 12800,
         "eval_images": 2000, "eval_every": 25, "target": 0.80, "cnn": {}}
# Full, the "paper" mode sized for one 2-core machine: the MLP grid, 3 seeds, one epoch of all
# 60,000 images (937 steps), 10,000 test images; with the axes ~35 minutes on a busy machine.
FULL = {"models": ("mlp",), "seeds": (0, 1, 2), "epochs": 1, "train_images": None,
        "eval_images": 10000, "eval_every": 100, "target": 0.80, "cnn": {}}


def grid(config: Dict, inits, norms, activations) -> List[tuple]:
    """(model, init, norm, activation, seed) in order; the CNN may use a smaller slice (quick)."""
    cells = []
    for kind in config["models"]:
        slice_ = config["cnn"] if kind == "cnn" else {}
        for init, activation, norm, seed in itertools.product(
                slice_.get("inits", inits), slice_.get("activations", activations), norms,
                config["seeds"]):
            cells.append((kind, init, norm, activation, seed))
    return cells


def run_study(data, device, config: Dict, inits=INITS, norms=STUDY_NORMS,
              activations=STUDY_ACTIVATIONS, clip_grad_norm=None, progress=True) -> Dict:
    runs = []
    cells = grid(config, inits, norms, activations)
    for kind, init, norm, activation, seed in progress_bar(cells, desc="study", enabled=progress):
        runs.append(run_one(kind, init, norm, activation, seed, data, device, config["epochs"],
                            config["eval_images"], config["eval_every"], config["target"],
                            clip_grad_norm))
    return {"runs": runs, "lr": LR, "batch_size": BATCH_SIZE, "mlp": MLP,
            "cnn": json_config(CNN), "config": json_config(config),
            "data": {"dir": data.data_dir, "mean": data.mean, "std": data.std,
                     "train_images": data.train_x.shape[0], "eval_images": config["eval_images"]},
            "device": device.type}


def resolve(args) -> Dict:
    config = dict(QUICK if args.quick else FULL)
    for key in ("models", "seeds", "epochs", "train_images", "target", "eval_every"):
        if getattr(args, key, None) is not None:
            config[key] = getattr(args, key)
    return config


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--models", nargs="+", choices=MODELS)
    parser.add_argument("--inits", nargs="+", choices=INITS, default=INITS)
    parser.add_argument("--norms", nargs="+", choices=("none", "fused", "torch"),
                        default=STUDY_NORMS)
    parser.add_argument("--activations", nargs="+", default=STUDY_ACTIVATIONS)
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--train-images", type=int)
    parser.add_argument("--eval-every", type=int)
    parser.add_argument("--target", type=float, help="target test accuracy, e.g. 0.85")
    parser.add_argument("--clip-grad-norm", type=float, default=None)
    parser.add_argument("--no-axes", dest="axes", action="store_false",
                        help="skip the batch-size and learning-rate axes (benchmarks/study_axes.py)")


# The study's layers are tiny (a batch of 2 x 64 features): on CPU a second thread only adds
# synchronisation, and on a busy machine OpenMP's waiting threads slowed the quick study ~3x.
STUDY_THREADS = 1


def run(args, device) -> Dict:
    """The axes first (the headline), then the init x activation x BatchNorm grid, on
    STUDY_THREADS CPU threads (the caller's count restored after)."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(STUDY_THREADS)
    try:
        result = _run(args, device)
    finally:
        torch.set_num_threads(threads)
    result["threads"] = STUDY_THREADS if device.type == "cpu" else threads
    return result


def _run(args, device) -> Dict:
    config = resolve(args)
    data = load_fashion_mnist(args.data_dir, config["train_images"], config["eval_images"])
    axes = None
    if getattr(args, "axes", True):
        axes_config = dict(study_axes.QUICK if args.quick else study_axes.FULL)
        count = axes_config["train_images"]
        axes_data = load_fashion_mnist(args.data_dir, count, axes_config["eval_images"]) \
            if count is None or count > data.train_x.shape[0] else dataclasses.replace(
                data, train_x=data.train_x[:count], train_y=data.train_y[:count])
        axes = study_axes.run_axes(axes_data, device, axes_config, args.progress)
        # Kept if the grid is cut short (the full run's headline is the axes); overwritten below.
        save_json(args.out, "study.json", {"runs": [], "axes": axes, "partial": True})
    result = run_study(data, device, config, args.inits, args.norms, args.activations,
                       args.clip_grad_norm, args.progress)
    if axes is not None:
        result["axes"] = axes
    return result


def main(argv=None) -> None:
    stage_main(argv, __doc__.split("\n")[0], add_args, run, "study.json", tables.study_tables)


if __name__ == "__main__":
    main()
