"""PNG plots of the results (matplotlib imported only when a plot is drawn: common/figures.py)."""
import math
import os
from collections import OrderedDict
from typing import List

from .common.figures import COLORS, pyplot, save_figure
from .study_axes_report import batch_axis_plot
from .tables import STUDY_NORM_LABELS, group_runs


def speedup_chart(microbench: dict, path: str) -> str:
    """Speed-up over eager of fused and compiled, one bar pair per case (headline cases, and in a
    full run the float32 ReLU rows of every shape)."""
    plt = pyplot()
    cases = OrderedDict()
    for row in microbench["rows"]:
        case = row["case"]
        if case["headline"] or (case["activation"] == "relu" and case["dtype"] == "float32"
                                and not case["residual"]):
            cases.setdefault(row["name"], {})[row["contender"]] = row
    names = list(cases)
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(names) + 1.5))
    for offset, contender in ((-0.2, "fused"), (0.2, "compiled")):
        values = [cases[n].get(contender, {}).get("speedup_vs_eager", float("nan")) for n in names]
        ax.barh([i + offset for i in range(len(names))], values, height=0.4,
                color=COLORS[contender], label=contender)
    ax.axvline(1.0, color="gray", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([n.replace("-float32", "").replace("-relu", "") for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up over eager nn.BatchNorm + activation (higher is better)")
    ax.set_title(f"Microbenchmark, {microbench['device']}, {microbench['threads']} threads, "
                 "float32 ReLU")
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def train_curves(train: dict, path: str) -> str:
    """Training loss of both models per step, and their difference (log scale)."""
    plt = pyplot()
    comparison = train["fashion_mnist"]
    fig, (ax, diff_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for norm, stats in comparison["norms"].items():
        fused = norm == "fused"  # drawn thin and dashed over the thick baseline: both visible
        ax.plot(stats["losses"], color=COLORS[norm], linewidth=1 if fused else 3,
                linestyle="--" if fused else "-",
                label="fused BatchNormAct2d" if fused else "nn.BatchNorm2d + ReLU")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Same seed, same weights, same batches")
    ax.legend()
    torch_losses, fused_losses = (comparison["norms"][n]["losses"] for n in ("torch", "fused"))
    diffs = [max(abs(a - b), 1e-9) for a, b in zip(torch_losses, fused_losses)]
    diff_ax.semilogy(diffs, color="tab:purple", linewidth=1, label="|fused - torch|")
    diff_ax.set_xlabel("step")
    diff_ax.set_ylabel("|loss difference|")
    diff_ax.set_title("float32 rounding differences, amplified by training")
    diff_ax.legend()
    return save_figure(fig, path)


def _grid(runs: List[dict]):
    groups = group_runs(runs)
    activations = list(OrderedDict.fromkeys(k[1] for k in groups))
    inits = list(OrderedDict.fromkeys(k[2] for k in groups))
    return groups, activations, inits


def _finish_grid(fig, axes, xlabel: str, ylabel: str, title: str, path: str) -> str:
    for ax in axes[-1]:
        ax.set_xlabel(xlabel)
    for row in axes:
        row[0].set_ylabel(ylabel)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path)


def study_curves(study: dict, model: str, path: str) -> str:
    """Test accuracy vs step, one panel per (activation, init), one line per norm (mean over
    seeds)."""
    plt = pyplot()
    groups, activations, inits = _grid([r for r in study["runs"] if r["model"] == model])
    fig, axes = plt.subplots(len(activations), len(inits), squeeze=False, sharex=True,
                             sharey=True, figsize=(3 * len(inits), 2.4 * len(activations)))
    for (kind, activation, init), by_norm in groups.items():
        ax = axes[activations.index(activation)][inits.index(init)]
        for norm, runs in by_norm.items():
            length = min(len(r["evals"]) for r in runs)
            steps = [runs[0]["evals"][i]["step"] for i in range(length)]
            accuracy = [sum(r["evals"][i]["test_accuracy"] for r in runs) / len(runs)
                        for i in range(length)]
            ax.plot(steps, accuracy, color=COLORS.get(norm),
                    label=STUDY_NORM_LABELS.get(norm, norm))
        ax.axhline(runs[0]["target"], color="gray", linestyle=":", linewidth=1)
        ax.set_title(f"{activation}, {init}", fontsize=9)
        ax.set_ylim(0, 1)
    return _finish_grid(fig, axes, "step", "test accuracy",
                        f"{model.upper()}: test accuracy during training (dotted: target)", path)


def grad_norm_bars(study: dict, model: str, path: str) -> str:
    """Per-layer weight-gradient norm on the first batch (log scale), one panel per (activation,
    init), bars per norm: vanishing gradients show as bars shrinking toward the input."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    groups, activations, inits = _grid([r for r in study["runs"] if r["model"] == model])
    fig, axes = plt.subplots(len(activations), len(inits), squeeze=False, sharey=True,
                             figsize=(3 * len(inits), 2.4 * len(activations)))
    for (kind, activation, init), by_norm in groups.items():
        ax = axes[activations.index(activation)][inits.index(init)]
        width = 0.8 / len(by_norm)
        for index, (norm, runs) in enumerate(by_norm.items()):
            norms = [g["grad_norm"] for g in runs[0]["grad_norms"]]  # first seed
            norms = [n if math.isfinite(n) and n > 0 else float("nan") for n in norms]
            ax.bar([i + index * width for i in range(len(norms))], norms, width=width,
                   color=COLORS.get(norm), label=STUDY_NORM_LABELS.get(norm, norm))
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{activation}, {init}", fontsize=9)
    return _finish_grid(fig, axes, "layer (input → output)", "‖∂L/∂W‖",
                        f"{model.upper()}: per-layer gradient norm at the start of training", path)


def all_plots(out_dir: str, microbench=None, train=None, study=None) -> dict:
    """Every plot the results allow; returns {key: file name relative to out_dir}."""
    made = {}
    if microbench:
        made["speedup"] = speedup_chart(microbench, os.path.join(out_dir, "speedup.png"))
    if train and train.get("fashion_mnist"):
        made["train_curves"] = train_curves(train, os.path.join(out_dir, "train_loss.png"))
    if study and study.get("axes"):
        made["study_batch_axis"] = batch_axis_plot(
            study["axes"], os.path.join(out_dir, "study_batch_axis_accuracy.png"))
    if study:
        for model in OrderedDict.fromkeys(r["model"] for r in study["runs"]):
            made[f"study_{model}"] = study_curves(
                study, model, os.path.join(out_dir, f"study_{model}_accuracy.png"))
            made[f"grad_{model}"] = grad_norm_bars(
                study, model, os.path.join(out_dir, f"study_{model}_grad_norms.png"))
    return {key: os.path.basename(path) for key, path in made.items()}
