"""Markdown tables of the stages' results: microbenchmark, training benchmark, training study (no
plotting here: this runs without matplotlib)."""
import math
from collections import OrderedDict
from typing import List

from .common.markdown import MiB, fmt, markdown_table, median
from .study_axes_report import axes_tables


def _case_label(case: dict) -> str:
    shape = "x".join(map(str, case["shape"]))
    extra = " +res" if case["residual"] else ""
    return f"({shape}) {case['activation']}{extra} {case['dtype']}"


def microbench_table(result: dict, headline_only: bool = False) -> str:
    """One line per case, the contenders side by side; times in ms (median, IQR in brackets)."""
    by_case = OrderedDict()
    for row in result["rows"]:
        if headline_only and not row["case"].get("headline"):
            continue
        by_case.setdefault(row["name"], {})[row["contender"]] = row
    lines = []
    for contenders in by_case.values():
        fused, eager = contenders["fused"], contenders["eager"]
        compiled = contenders.get("compiled")
        case = fused["case"]
        lines.append([
            _case_label(case), case["memory_format"], case["mode"],
            f"{fmt(eager['median_s'] * 1e3)} ({fmt(eager['iqr_s'] * 1e3, 2)})",
            f"{fmt(fused['median_s'] * 1e3)} ({fmt(fused['iqr_s'] * 1e3, 2)})",
            f"**{fused['speedup_vs_eager']:.2f}x**",
            fmt(compiled["median_s"] * 1e3) if compiled else "—",
            f"{compiled['speedup_vs_eager']:.2f}x" if compiled else "—",
            fmt(compiled.get("compile_s")) if compiled else "—",
            fmt(fused["gbps"]), fmt(fused["pct_copy_bw"], 2),
            fmt(fused["max_abs_diff_fused_vs_eager"], 2)])
    header = ["case", "layout", "mode", "eager ms (IQR)", "fused ms (IQR)", "fused speed-up",
              "compiled ms", "compiled speed-up", "compile s", "fused GB/s", "% copy BW",
              "max abs diff fused vs eager"]
    return markdown_table(header, lines, "lllrrrrrrrrr")


def copy_bandwidth_line(result: dict) -> str:
    bw = result["copy_bandwidth"]
    return (f"Measured copy bandwidth on {result['device']} ({result['threads']} threads): "
            f"{bw['gbps']:.1f} GB/s (read + write of a {bw['bytes'] / 2 / MiB:.0f} MiB tensor, "
            f"median of {bw['repeats']}).")


def _mib(nbytes) -> str:
    return "—" if nbytes is None else f"{nbytes / MiB:.1f}"


def _curve_verdict(comparison: dict) -> str:
    if comparison.get("curves_overlap") is None:
        return f"max diff {comparison['loss_curve_max_abs_diff']:.1e} (no fp64 reference)"
    verdict = "overlap" if comparison["curves_overlap"] else "DIFFER"
    # No '|' here: the text sits in a markdown table cell.
    return (f"{verdict}: first {comparison['reference_steps']} steps, max diff fused vs fp64 "
            f"{comparison['fused_vs_fp64']:.1e}, torch vs fp64 {comparison['torch_vs_fp64']:.1e}"
            f"; all steps fused vs torch {comparison['loss_curve_max_abs_diff']:.1e}")


def _train_rows(label: str, comparison: dict) -> List[list]:
    rows = []
    for norm, stats in comparison["norms"].items():
        accuracy = stats.get("test_accuracy_per_epoch") or []
        losses = stats["losses"]
        rows.append([
            label, "fused BatchNormAct2d" if norm == "fused" else "nn.BatchNorm2d + ReLU",
            fmt(stats["images_per_s"]),
            f"**{comparison['speedup']:.2f}x**" if norm == "fused" and comparison["speedup"] else "",
            _mib(stats["saved_for_backward_bytes"]), _mib(stats["cuda_peak_bytes"]),
            fmt(losses[-1] if losses else None, 4),
            f"{100 * accuracy[-1]:.2f}%" if accuracy else "—",
            _curve_verdict(comparison) if norm == "fused" else ""])
    return rows


def train_table(result: dict) -> str:
    rows = []
    if result.get("fashion_mnist"):
        data = result["data"]
        rows += _train_rows(f"Fashion-MNIST 1x28x28 ({data['train_images']} images)",
                            result["fashion_mnist"])
    for synthetic in result.get("synthetic", []):
        size = synthetic["image_size"]
        rows += _train_rows(f"synthetic 3x{size}x{size}", synthetic)
    header = ["data", "norm", "images/s", "speed-up", "saved for backward MiB/step",
              "CUDA peak MiB", "final loss", "test acc", "loss curves (same seed)"]
    return markdown_table(header, rows, "llrrrrrrl")


# The study's norms as its tables and figures name them (the axes name theirs in
# study_axes_report.AXIS_NORM_LABELS).
STUDY_NORM_LABELS = {"none": "no BN", "fused": "BN (fused)", "torch": "BN (torch)"}


def group_runs(runs: List[dict]):
    """{(model, activation, init): {norm: [runs over seeds]}}, in first-seen order."""
    groups = OrderedDict()
    for run in runs:
        key = (run["model"], run["activation"], run["init"])
        groups.setdefault(key, OrderedDict()).setdefault(run["norm"], []).append(run)
    return groups


def _steps_cell(runs: List[dict]) -> str:
    reached = [r["steps_to_target"] for r in runs if r["steps_to_target"] is not None]
    if not reached:
        return "never" + (" (NaN)" if any(r["diverged"] for r in runs) else "")
    text = fmt(median(reached))
    return text if len(reached) == len(runs) else f"{text} ({len(reached)}/{len(runs)})"


def _epochs_cell(runs: List[dict]) -> str:
    epochs = min(len(r["epoch_accuracy"]) for r in runs)
    if any(r["diverged"] for r in runs):
        return "diverged (NaN loss)"
    means = [sum(r["epoch_accuracy"][e] for r in runs) / len(runs) for e in range(epochs)]
    return ", ".join(f"{100 * m:.1f}" for m in means)


def _grad_ratio_cell(runs: List[dict]) -> str:
    """Second weight layer's gradient norm over the last hidden layer's (median over seeds; the
    first layer is skipped, its fan-in differs): far below 1 is a vanishing gradient, far above
    an exploding one."""
    ratios = []
    for run in runs:
        norms = [g["grad_norm"] for g in run["grad_norms"]]
        if len(norms) >= 4 and norms[-2] > 0 and math.isfinite(norms[1]):
            ratios.append(norms[1] / norms[-2])
    return fmt(median(ratios), 2) if ratios else "—"


def study_tables(result: dict) -> str:
    """Steps-to-target (Ioffe & Szegedy's table), accuracy per epoch, and the gradient ratio, one
    table per model."""
    groups = group_runs(result["runs"])
    out = []
    for model in OrderedDict.fromkeys(k[0] for k in groups):
        norms = list(OrderedDict.fromkeys(r["norm"] for r in result["runs"] if r["model"] == model))
        target = next(r["target"] for r in result["runs"] if r["model"] == model)
        header = ["activation", "init"]
        for norm in norms:
            label = STUDY_NORM_LABELS.get(norm, norm)
            header += [f"{label}: steps to {100 * target:.0f}%", f"{label}: test acc % per epoch",
                       f"{label}: grad norm layer 2 / layer L"]
        rows = []
        for (kind, activation, init), by_norm in groups.items():
            if kind != model:
                continue
            row = [activation, init]
            for norm in norms:
                runs = by_norm.get(norm)
                row += ([_steps_cell(runs), _epochs_cell(runs), _grad_ratio_cell(runs)]
                        if runs else ["—"] * 3)
            rows.append(row)
        seeds = sorted({r["seed"] for r in result["runs"] if r["model"] == model})
        out.append(f"**{model.upper()}** (seeds {', '.join(map(str, seeds))}; steps of batch "
                   f"{result['batch_size']}, median over seeds, (k/n) when only k reached it)\n\n"
                   + markdown_table(header, rows, "ll" + "rrr" * len(norms)))
    if result.get("axes"):
        out.append(axes_tables(result["axes"]))
    return "\n\n".join(out)
