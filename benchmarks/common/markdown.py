"""Markdown tables and the numbers in them."""
from typing import List, Optional, Sequence

MiB = 2 ** 20  # the unit of every memory column


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


def median(values):
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
