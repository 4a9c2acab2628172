"""Markdown tables of the results (no plotting here: this runs without matplotlib)."""
from collections import OrderedDict
from typing import List, Optional, Sequence


def markdown_table(header: Sequence[str], rows: List[Sequence], align: Optional[str] = None) -> str:
    """align: one character per column, 'l' or 'r' (default: first column left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(map(str, header)) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value, digits: int = 3) -> str:
    """Three significant digits, '—' for missing values."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 10 ** digits:
        return f"{value:.0f}"
    return f"{value:.{digits}g}" if magnitude >= 1e-3 else f"{value:.2e}"


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
              "max |fused-eager|"]
    return markdown_table(header, lines, "lllrrrrrrrrr")


def copy_bandwidth_line(result: dict) -> str:
    bw = result["copy_bandwidth"]
    return (f"Measured copy bandwidth on {result['device']} ({result['threads']} threads): "
            f"{bw['gbps']:.1f} GB/s (read + write of a {bw['bytes'] / 2 / 2**20:.0f} MiB tensor, "
            f"median of {bw['repeats']}).")
