"""Training benchmark: the ResNet-style CNN with fused BatchNormAct2d vs nn.BatchNorm2d + ReLU,
same seed, same initial weights (one state_dict loaded into both), same batches.

    python -m benchmarks.train --quick|--full [--synthetic] [--image-size 32 64] [--device ...]

Reports images/s (the two models step in turn, so machine noise hits both alike), memory per step
(bytes autograd saves for backward; on CUDA also torch.cuda.max_memory_allocated) and both loss
curves with their largest difference. --synthetic trains on random 3xSxS images for throughput
at larger input sizes.
"""
import argparse
import copy
import time
from typing import Dict, List

import torch

from . import tables
from .common.cli import stage_main
from .common.progress import progress_bar
from .common.results import json_config
from .common.timing import synchronize
from .data import DEFAULT_DATA_DIR, load_fashion_mnist
from .models import ConvNet
from .trainer import batches, evaluate, memory_probe, seed_everything, train_step

COMPARED_NORMS = ("torch", "fused")  # the unfused baseline first
# Two float32 runs that differ only in rounding drift apart as training amplifies ~1e-7 differences
# (SGD with momentum is chaotic at a useful learning rate), so "overlap within float tolerance" is
# judged against float64: over the first REFERENCE_STEPS steps a float64 copy of the torch model
# trains on the same batches, and the fused curve must stay as close to it as the torch float32
# curve does (within CURVE_SLACK times torch's own distance, or CURVE_ATOL).
REFERENCE_STEPS = {"quick": 32, "full": 100}
CURVE_SLACK = 2.0
CURVE_ATOL = 1e-5

QUICK = {"train_images": 4096, "test_images": 2000, "epochs": 1, "batch_size": 128,
         "widths": (16, 32, 64), "blocks": 1, "synthetic_steps": 6, "image_sizes": (32,)}
FULL = {"train_images": None, "test_images": None, "epochs": 3, "batch_size": 128,
        "widths": (32, 64, 128), "blocks": 2, "synthetic_steps": 30, "image_sizes": (32, 64, 128)}


def compare(train_x, train_y, test_x, test_y, device: torch.device, widths, blocks: int,
            epochs: int, batch_size: int, seed: int = 0, lr: float = 0.01,
            channels_last: bool = False, reference_steps: int = 0,
            progress: bool = True, warmup_steps: int = 2) -> Dict:
    """Trains one model per norm, stepping them in turn on the same batches (and a float64 torch
    model for the first reference_steps steps, untimed)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    seed_everything(seed)
    in_channels = train_x.shape[1]
    reference = ConvNet("torch", "relu", widths, blocks, True, in_channels)
    models, optimizers = {}, {}
    for norm in COMPARED_NORMS:
        model = ConvNet(norm, "relu", widths, blocks, True, in_channels)
        model.load_state_dict(reference.state_dict())
        models[norm] = model.to(device, memory_format=fmt)
        optimizers[norm] = torch.optim.SGD(models[norm].parameters(), lr=lr, momentum=0.9)
    reference = reference.to(device, torch.float64)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=lr, momentum=0.9)
    reference_losses = []
    probe_x = train_x[:batch_size].to(device).contiguous(memory_format=fmt)
    probe_y = train_y[:batch_size].to(device)
    memory = {norm: memory_probe(copy.deepcopy(models[norm]), probe_x, probe_y, device)
              for norm in COMPARED_NORMS}

    losses = {norm: [] for norm in COMPARED_NORMS}
    seconds = {norm: 0.0 for norm in COMPARED_NORMS}
    accuracy = {norm: [] for norm in COMPARED_NORMS}
    steps_per_epoch = train_x.shape[0] // batch_size

    def schedule():
        for epoch in range(epochs):
            for index, (xb, yb) in enumerate(batches(train_x, train_y, batch_size, seed + epoch)):
                yield index + 1 == steps_per_epoch, xb, yb

    timed_images = 0
    for step, (epoch_end, xb, yb) in enumerate(progress_bar(
            schedule(), desc="train fused vs torch", enabled=progress,
            total=epochs * steps_per_epoch)):
        xb = xb.to(device).contiguous(memory_format=fmt)
        yb = yb.to(device)
        for norm in COMPARED_NORMS:
            synchronize(device)
            start = time.perf_counter()
            loss = train_step(models[norm], optimizers[norm], xb, yb)
            losses[norm].append(loss.item())  # .item() syncs: the step is complete
            if step >= warmup_steps:
                seconds[norm] += time.perf_counter() - start
        if step >= warmup_steps:
            timed_images += xb.shape[0]
        if step < reference_steps:
            loss = train_step(reference, reference_optimizer, xb.double(), yb)
            reference_losses.append(loss.item())
        if epoch_end and test_x is not None and test_x.shape[0]:
            for norm in COMPARED_NORMS:
                accuracy[norm].append(evaluate(models[norm], test_x, test_y, device,
                                               memory_format=fmt)["accuracy"])
    return _summarise(losses, seconds, timed_images, memory, accuracy, reference_losses)


def _max_diff(a: List[float], b: List[float]) -> float:
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)


def _summarise(losses, seconds, timed_images, memory, accuracy, reference_losses) -> Dict:
    base, fused = losses["torch"], losses["fused"]
    out = {"norms": {}, "steps": len(base), "loss_curve_max_abs_diff": _max_diff(base, fused),
           "reference_steps": len(reference_losses), "curve_slack": CURVE_SLACK,
           "curve_atol": CURVE_ATOL}
    if reference_losses:
        window = len(reference_losses)
        out["window_max_abs_diff_fused_vs_torch"] = _max_diff(base[:window], fused[:window])
        out["torch_vs_fp64"] = _max_diff(base, reference_losses)
        out["fused_vs_fp64"] = _max_diff(fused, reference_losses)
        out["curves_overlap"] = (out["fused_vs_fp64"]
                                 <= CURVE_SLACK * out["torch_vs_fp64"] + CURVE_ATOL)
    else:
        out["curves_overlap"] = None
    for norm in COMPARED_NORMS:
        out["norms"][norm] = {
            "images_per_s": timed_images / seconds[norm] if seconds[norm] else None,
            "timed_images": timed_images, "seconds": seconds[norm], "losses": losses[norm],
            "test_accuracy_per_epoch": accuracy[norm], **memory[norm]}
    t, f = out["norms"]["torch"]["images_per_s"], out["norms"]["fused"]["images_per_s"]
    out["speedup"] = f / t if f and t else None
    return out


def synthetic(device: torch.device, image_size: int, widths, blocks: int, batch_size: int,
              steps: int, seed: int = 0, channels_last: bool = False, progress: bool = True):
    """Random 3xSxS images and labels: throughput at input sizes Fashion-MNIST lacks."""
    gen = torch.Generator().manual_seed(seed)
    count = batch_size * steps
    x = torch.randn(count, 3, image_size, image_size, generator=gen)
    y = torch.randint(0, 10, (count,), generator=gen)
    out = compare(x, y, None, None, device, widths, blocks, 1, batch_size, seed,
                  channels_last=channels_last, progress=progress)
    out["image_size"] = image_size
    return out


def resolve(args) -> Dict:
    config = dict(QUICK if args.quick else FULL)
    for key in ("train_images", "epochs", "batch_size", "blocks"):
        if getattr(args, key, None) is not None:
            config[key] = getattr(args, key)
    if getattr(args, "image_size", None):
        config["image_sizes"] = tuple(args.image_size)
    return config


def run(args, device: torch.device) -> Dict:
    """The real-data comparison (unless --synthetic) and the synthetic sizes (quick mode: the
    smallest only, full mode: all)."""
    config = resolve(args)
    result: Dict = {"config": json_config(config),
                    "device": device.type, "channels_last": args.channels_last}
    if not args.synthetic:
        data = load_fashion_mnist(args.data_dir, config["train_images"], config["test_images"])
        result["data"] = {"dir": data.data_dir, "mean": data.mean, "std": data.std,
                          "train_images": data.train_x.shape[0], "test_images": data.test_x.shape[0]}
        result["fashion_mnist"] = compare(
            data.train_x, data.train_y, data.test_x, data.test_y, device, config["widths"],
            config["blocks"], config["epochs"], config["batch_size"], args.seed,
            channels_last=args.channels_last, progress=args.progress,
            reference_steps=REFERENCE_STEPS["quick" if args.quick else "full"])
    result["synthetic"] = [
        synthetic(device, size, config["widths"], config["blocks"], config["batch_size"] // 2,
                  config["synthetic_steps"], args.seed, args.channels_last, args.progress)
        for size in config["image_sizes"]]
    return result


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--synthetic", action="store_true", help="synthetic data only")
    parser.add_argument("--image-size", type=int, nargs="+", help="synthetic input sizes")
    parser.add_argument("--train-images", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--blocks", type=int, help="blocks per stage")


def main(argv=None) -> None:
    stage_main(argv, __doc__.split("\n")[0], add_args, run, "train.json", tables.train_table)


if __name__ == "__main__":
    main()
