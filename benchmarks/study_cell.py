"""One cell of the training study (benchmarks/study.py and its axes, benchmarks/study_axes.py):
the model of a (kind, norm, activation, init, seed) and its training run, evaluated as it trains.
"""
import copy
import math
import time
from typing import Dict, Optional

import torch

from .models import ConvNet, DeepMLP, init_weights
from .trainer import batches, evaluate, layer_grad_norms, seed_everything, train_step

MODELS = ("mlp", "cnn")
MLP = {"depth": 11, "width": 100}
CNN = {"widths": (16, 32, 32), "blocks": 2}  # 1 + 3 * 2 * 2 = 13 conv layers, no skips
LR, BATCH_SIZE = 1e-3, 64


# The norms whose training-mode output depends on the batch (their eval uses running statistics).
BATCH_STATISTICS_NORMS = ("fused", "torch")


def build_model(kind: str, norm: str, activation: str, init: str, seed: int, arch=None):
    """arch: the model's sizes ({"depth", "width"} of an MLP, {"widths", "blocks"} of a CNN);
    default MLP / CNN above."""
    seed_everything(seed)
    if kind == "mlp":
        arch = arch or MLP
        model = DeepMLP(norm, activation, arch["depth"], arch["width"])
    elif kind == "cnn":
        arch = arch or CNN
        model = ConvNet(norm, activation, arch["widths"], arch["blocks"], residual=False)
    else:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {kind!r}")
    return init_weights(model, init)


def run_one(kind: str, init: str, norm: str, activation: str, seed: int, data, device,
            epochs: int, eval_images: int, eval_every: int, target: float,
            clip_grad_norm: Optional[float] = None, batch_size: int = BATCH_SIZE,
            make_optimizer=None, arch=None, batch_statistics_eval: bool = False) -> Dict:
    """One configuration: trains, evaluating every eval_every steps on the first eval_images
    test images; stops early if the loss becomes NaN or infinite (and then evaluates the broken
    model once more, so its final accuracy is what it is: about chance). make_optimizer(parameters)
    replaces the default Adam(lr=LR) (the study's batch-size and learning-rate axes use SGD).
    batch_statistics_eval: a BatchNorm model is also evaluated in training mode, normalised by the
    statistics of test batches of the training batch size (BatchNorm's train/eval gap)."""
    model = build_model(kind, norm, activation, init, seed, arch).to(device)
    optimizer = (make_optimizer or (lambda params: torch.optim.Adam(params, lr=LR)))(model.parameters())
    test_x, test_y = data.test_x[:eval_images], data.test_y[:eval_images]
    first_x, first_y = next(batches(data.train_x, data.train_y, batch_size, seed))
    run = {"model": kind, "init": init, "norm": norm, "activation": activation, "seed": seed,
           "clip_grad_norm": clip_grad_norm, "target": target,
           "grad_norms": layer_grad_norms(model, first_x.to(device), first_y.to(device)),
           "evals": [], "epoch_accuracy": [], "diverged": False, "steps_to_target": None}
    start, step, window = time.perf_counter(), 0, []

    def record(epoch_end: bool):
        metrics = evaluate(model, test_x, test_y, device)
        train_loss = sum(window) / len(window) if window else None
        run["evals"].append({"step": step, "test_accuracy": metrics["accuracy"],
                             "test_loss": metrics["loss"], "train_loss": train_loss})
        window.clear()
        if run["steps_to_target"] is None and metrics["accuracy"] >= target:
            run["steps_to_target"] = step
        if epoch_end:
            run["epoch_accuracy"].append(metrics["accuracy"])

    record(False)
    for epoch in range(epochs):
        for xb, yb in batches(data.train_x, data.train_y, batch_size, seed + 1000 * epoch):
            loss = train_step(model, optimizer, xb.to(device), yb.to(device), clip_grad_norm)
            step += 1
            window.append(loss.item())
            if not math.isfinite(window[-1]):
                run["diverged"] = True
                record(False)
                break
            if step % eval_every == 0:
                record(False)
        if run["diverged"]:
            break
        if not run["evals"] or run["evals"][-1]["step"] != step:
            record(True)
        else:
            run["epoch_accuracy"].append(run["evals"][-1]["test_accuracy"])
    run["steps"] = step
    run["final_accuracy"] = run["evals"][-1]["test_accuracy"]
    if batch_statistics_eval and norm in BATCH_STATISTICS_NORMS:
        run["batch_statistics_accuracy"] = batch_statistics_accuracy(
            model, test_x, test_y, batch_size, device)
    run["seconds"] = time.perf_counter() - start
    return run


@torch.no_grad()
def batch_statistics_accuracy(model, x, y, batch_size: int, device) -> float:
    """Accuracy in training mode (each test batch of batch_size normalised by its own statistics,
    as in training), on a copy so the model's running statistics stay as they were; a last batch
    smaller than batch_size is left out (one sample has no batch variance)."""
    probe = copy.deepcopy(model).train()
    usable = x.shape[0] - x.shape[0] % batch_size
    correct = 0
    for start in range(0, usable, batch_size):
        logits = probe(x[start:start + batch_size].to(device))
        correct += (logits.argmax(1) == y[start:start + batch_size].to(device)).sum().item()
    return correct / max(usable, 1)
