"""Training study: what BatchNorm and initialisation do, on Fashion-MNIST.

    python -m benchmarks.study --quick|--full [--models mlp cnn] [--inits ...] [--norms ...]
                               [--activations ...] [--seeds 0 1 2] [--clip-grad-norm 1.0]

A deep MLP (11 hidden layers of equal width, the usual teaching example) and a plain deep CNN
(no skips), each for init {N(0,1), PyTorch default, Xavier, He} x {no BatchNorm, fused BatchNorm}
x {sigmoid, tanh, relu} x seeds; Adam 1e-3, batch 64. Per run: test accuracy during training,
steps to reach a target test accuracy (Ioffe & Szegedy's table), per-layer gradient norms on the
first batch (the vanishing-gradient picture), optional gradient clipping. Then the batch-size
and learning-rate axes of benchmarks/study_axes.py (--no-axes skips them). Inputs are normalised
with the training set's own mean and std (computed, about 0.2860 / 0.3530).
"""
import argparse
import dataclasses
import itertools
from typing import Dict, List

from . import study_axes, tables
from .common.cli import stage_main
from .common.progress import progress_bar
from .common.results import json_config
from .data import DEFAULT_DATA_DIR, load_fashion_mnist
from .models import INITS
# build_model: the study's models, for its callers (tests build them); run_one trains one cell.
from .study_cell import BATCH_SIZE, CNN, LR, MLP, MODELS, build_model, run_one  # noqa: F401

STUDY_ACTIVATIONS = ("sigmoid", "tanh", "relu")
STUDY_NORMS = ("none", "fused")

# Quick: the whole MLP grid and a CNN slice, one seed, one epoch of 12,800 images (200 steps).
QUICK = {"models": ("mlp", "cnn"), "seeds": (0,), "epochs": 1, "train_images": 12800,
         "eval_images": 2000, "eval_every": 25, "target": 0.80,
         "cnn": {"inits": ("normal", "default", "kaiming"), "activations": ("relu",)}}
FULL = {"models": MODELS, "seeds": (0, 1, 2), "epochs": 5, "train_images": None,
        "eval_images": 10000, "eval_every": 100, "target": 0.85, "cnn": {}}


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


def run(args, device) -> Dict:
    config = resolve(args)
    data = load_fashion_mnist(args.data_dir, config["train_images"], config["eval_images"])
    result = run_study(data, device, config, args.inits, args.norms, args.activations,
                       args.clip_grad_norm, args.progress)
    if getattr(args, "axes", True):
        axes_config = dict(study_axes.QUICK if args.quick else study_axes.FULL)
        count = axes_config["train_images"]
        axes_data = load_fashion_mnist(args.data_dir, count, axes_config["eval_images"]) \
            if count is None or count > data.train_x.shape[0] else dataclasses.replace(
                data, train_x=data.train_x[:count], train_y=data.train_y[:count])
        result["axes"] = study_axes.run_axes(axes_data, device, axes_config, args.progress)
    return result


def main(argv=None) -> None:
    stage_main(argv, __doc__.split("\n")[0], add_args, run, "study.json", tables.study_tables)


if __name__ == "__main__":
    main()
