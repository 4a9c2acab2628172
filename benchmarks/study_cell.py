"""One cell of the training study (benchmarks/study.py and its axes, benchmarks/study_axes.py):
the model of a (kind, norm, activation, init, seed) and its training run, evaluated as it trains.
"""
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


def build_model(kind: str, norm: str, activation: str, init: str, seed: int):
    seed_everything(seed)
    if kind == "mlp":
        model = DeepMLP(norm, activation, MLP["depth"], MLP["width"])
    elif kind == "cnn":
        model = ConvNet(norm, activation, CNN["widths"], CNN["blocks"], residual=False)
    else:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {kind!r}")
    return init_weights(model, init)


def run_one(kind: str, init: str, norm: str, activation: str, seed: int, data, device,
            epochs: int, eval_images: int, eval_every: int, target: float,
            clip_grad_norm: Optional[float] = None, batch_size: int = BATCH_SIZE,
            make_optimizer=None) -> Dict:
    """One configuration: trains, evaluating every eval_every steps on the first eval_images
    test images; stops early if the loss becomes NaN or infinite. make_optimizer(parameters)
    replaces the default Adam(lr=LR) (the study's batch-size and learning-rate axes use SGD)."""
    model = build_model(kind, norm, activation, init, seed).to(device)
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
    run["seconds"] = time.perf_counter() - start
    return run
