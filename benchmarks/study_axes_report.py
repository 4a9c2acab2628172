"""Tables, plot and REPORT.md paragraph of the study's batch-size and learning-rate axes
(benchmarks/study_axes.py). Tables need no matplotlib; the plot imports it when called."""
from collections import OrderedDict
from typing import List

from .common.figures import COLORS, pyplot, save_figure
from .common.markdown import fmt, markdown_table

# The axes' norms (benchmarks/study_axes.py) as their tables, figure and paragraph name them.
AXIS_NORM_LABELS = {"fused": "BatchNorm", "group_norm": "GroupNorm", "layer_norm": "LayerNorm",
                    "none": "no norm"}


def _by(runs: List[dict], key: str):
    """{norm: {key value: [runs over seeds]}} in first-seen order."""
    out = OrderedDict()
    for run in runs:
        out.setdefault(run["norm"], OrderedDict()).setdefault(run[key], []).append(run)
    return out


def _accuracy(runs: List[dict]):
    if all(r["diverged"] for r in runs):
        return None
    finished = [r["final_accuracy"] for r in runs if not r["diverged"]]
    return sum(finished) / len(finished)


def _cell(runs: List[dict]) -> str:
    accuracy = _accuracy(runs)
    if accuracy is None:
        return "diverged"
    reached = [r["steps_to_target"] for r in runs if r["steps_to_target"] is not None]
    steps = fmt(sorted(reached)[len(reached) // 2]) if reached else "never"
    note = " (some diverged)" if any(r["diverged"] for r in runs) else ""
    return f"{100 * accuracy:.1f} / {steps}{note}"


def axes_tables(axes: dict) -> str:
    target = 100 * axes["config"]["target"]
    batch = _by(axes["batch_axis"], "batch_size")
    sizes = list(OrderedDict.fromkeys(r["batch_size"] for r in axes["batch_axis"]))
    rows = [[AXIS_NORM_LABELS[norm]] + [_cell(by_size[b]) if b in by_size else "—" for b in sizes]
            for norm, by_size in batch.items()]
    out = [f"**Batch-size axis** (test accuracy % / steps to {target:.0f}%; SGD lr "
           f"{axes['base_lr']} x batch / {axes['base_batch']}, momentum {axes['momentum']}, "
           f"the same images per cell)\n\n"
           + markdown_table(["norm"] + [f"batch {b}" for b in sizes], rows)]
    lr = _by(axes["lr_axis"], "lr_multiplier")
    mults = list(OrderedDict.fromkeys(r["lr_multiplier"] for r in axes["lr_axis"]))
    rows = [[AXIS_NORM_LABELS[norm]] + [_cell(by_mult[m]) if m in by_mult else "—" for m in mults]
            for norm, by_mult in lr.items()]
    out.append(f"**Learning-rate axis** (test accuracy % / steps to {target:.0f}%; batch "
               f"{axes['base_batch']}, SGD momentum {axes['momentum']})\n\n"
               + markdown_table(["norm"] + [f"{m:g}x lr ({m * axes['base_lr']:g})" for m in mults], rows))
    return "\n\n".join(out)


def batch_axis_plot(axes: dict, path: str) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for norm, by_size in _by(axes["batch_axis"], "batch_size").items():
        sizes = [b for b in by_size if _accuracy(by_size[b]) is not None]
        ax.plot(sizes, [100 * _accuracy(by_size[b]) for b in sizes], marker="o",
                color=COLORS.get(norm), label=AXIS_NORM_LABELS[norm])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (same images seen, lr scaled with batch)")
    ax.set_ylabel("test accuracy %")
    ax.set_title("Plain CNN, He init, ReLU: accuracy vs batch size")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def axes_paragraph(axes: dict) -> str:
    """What the numbers show, written from the numbers (so it stays true when they change)."""
    batch = _by(axes["batch_axis"], "batch_size")
    sizes = sorted({r["batch_size"] for r in axes["batch_axis"]})
    small, large = sizes[0], sizes[-1]

    def acc(norm, size):
        runs = batch.get(norm, {}).get(size)
        value = _accuracy(runs) if runs else None
        return "diverged" if value is None else f"{100 * value:.1f}%"

    text = [f"Batch size: from batch {large} to batch {small} (same images, learning rate scaled "
            f"with the batch) BatchNorm goes from {acc('fused', large)} to {acc('fused', small)}, "
            f"GroupNorm from {acc('group_norm', large)} to {acc('group_norm', small)}, LayerNorm from "
            f"{acc('layer_norm', large)} to {acc('layer_norm', small)}, no norm from {acc('none', large)} "
            f"to {acc('none', small)}."]
    lr = _by(axes["lr_axis"], "lr_multiplier")
    for norm in lr:
        cells = ", ".join(f"{m:g}x: " + ("diverged" if _accuracy(runs) is None else f"{100 * _accuracy(runs):.1f}%")
                          for m, runs in lr[norm].items())
        text.append(f"Learning rate, {AXIS_NORM_LABELS[norm]}: {cells}.")
    text.append("What the literature leads one to expect (stated here as expectation, not as what "
                "the numbers above show): BatchNorm's statistics come from the batch, so at tiny "
                "batches they are noisy and eval on running averages differs from training, while "
                "GroupNorm and LayerNorm normalise each sample on its own (Wu & He); without a norm "
                "a plain deep CNN tolerates only small learning rates (Ioffe & Szegedy's BN-x5 / "
                "BN-x30). Quick mode trains each cell on a few thousand images, one seed: too short "
                "to test either claim; `--full` (one epoch, three seeds) is the run to read.")
    return " ".join(text)
