"""Markdown tables of the stages' results: microbenchmark, CPU dtypes, host overhead, training
benchmark, training study (no plotting here: this runs without matplotlib)."""
import math
from collections import OrderedDict
from typing import List

from .common.markdown import MiB, fmt, markdown_table
from .study_axes_report import axes_tables
from .study_report import grid_tables


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


def study_tables(result: dict) -> str:
    """The study's tables: the batch-size and learning-rate axes (the headline), then the init x
    activation x BatchNorm grid, one table per model (benchmarks/study_axes_report.py and
    benchmarks/study_report.py make them)."""
    out = [axes_tables(result["axes"])] if result.get("axes") else []
    if result["runs"]:
        out.append(grid_tables(result))
    return "\n\n".join(out)


def _geometric_mean(values) -> float:
    return math.exp(sum(map(math.log, values)) / len(values))


def cpu_dtypes_table(result: dict) -> str:
    """benchmarks.cpu_dtypes: one line per (shape, layout, dtype), then per dtype the minimum and
    geometric mean speed-up. % copy BW: the fused step's bytes moved / its median time, against
    the measured copy bandwidth of the same dtype (when the result holds it)."""
    rows = [["x".join(map(str, row["shape"][1:])), row["layout"], row["dtype"],
             fmt(row["eager_ms"]), fmt(row["fused_ms"]), f"**{row['speedup']:.2f}x**",
             fmt(row.get("gbps")), fmt(row.get("pct_copy_bw"), 2)] for row in result["rows"]]
    header = ["shape (CxHxW)", "layout", "dtype", "eager ms", "fused ms", "fused speed-up",
              "fused GB/s", "% copy BW"]
    lines = [markdown_table(header, rows, "lllrrrrr"), ""]
    bandwidth = result.get("copy_bandwidth") or {}
    for dtype in OrderedDict.fromkeys(row["dtype"] for row in result["rows"]):
        ups = [row["speedup"] for row in result["rows"] if row["dtype"] == dtype]
        copy = (f"; copy bandwidth {bandwidth[dtype]['gbps']:.1f} GB/s" if dtype in bandwidth
                else "")
        lines.append(f"- {dtype}: speed-up min {min(ups):.2f}x, geometric mean "
                     f"{_geometric_mean(ups):.2f}x over {len(ups)} rows{copy}")
    return "\n".join(lines)


def _us(seconds) -> str:
    return "—" if seconds is None else f"{seconds * 1e6:.1f}"


def host_overhead_table(result: dict) -> str:
    """benchmarks.host_overhead: ops dispatched and host time per call, fused vs eager."""
    rows = []
    for case, r in result["cases"].items():
        fused, eager = r["fused"]["host_s"], r["eager"]["host_s"]
        rows.append([case, r["fused"]["ops"], r["eager"]["ops"], f"{r['ops_ratio']:.2f}",
                     _us(fused["median_s"]), _us(eager["median_s"]),
                     f"**{r['host_ratio']:.2f}**", f"{r['host_ratio_min']:.2f}",
                     _us(fused.get("cpu_median_s")), _us(eager.get("cpu_median_s")),
                     fmt(r.get("host_ratio_cpu"), 2)])
    header = ["case", "ops fused", "ops eager", "ops ratio", "fused us", "eager us",
              "host ratio", "ratio of min", "fused CPU us", "eager CPU us", "CPU ratio"]
    return markdown_table(header, rows, "l" + "r" * 10)
