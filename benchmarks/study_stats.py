"""Mean and spread over seeds, and whether a difference stands out of that spread: the one rule
every study table and sentence uses.

A cell's spread is the sample standard deviation over its seeds. A difference of two cells is
*supported* when it exceeds the sum of their spreads (the two mean ± spread intervals do not
overlap) and each cell has at least two seeds; otherwise the tables mark it "within spread" and
the sentences say so.
"""
import math
from typing import Dict, List, Optional, Sequence

MIN_SEEDS = 2  # a spread needs two values


def summary(values: Sequence[float]) -> Optional[Dict]:
    """{n, mean, sd} of values (sd 0 for one value); None for none."""
    values = [float(v) for v in values]
    if not values:
        return None
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"n": len(values), "mean": mean, "sd": sd}


def difference(a: Optional[Dict], b: Optional[Dict]) -> Optional[Dict]:
    """a - b with its spread (a's sd + b's sd) and whether the spread supports it."""
    if a is None or b is None:
        return None
    delta, spread = a["mean"] - b["mean"], a["sd"] + b["sd"]
    supported = min(a["n"], b["n"]) >= MIN_SEEDS and abs(delta) > spread
    return {"delta": delta, "spread": spread, "supported": supported}


def pct(s: Optional[Dict]) -> str:
    """A fraction summary as 'mean ± sd' in percent."""
    return "—" if s is None else f"{100 * s['mean']:.1f} ± {100 * s['sd']:.1f}"


def pct_diff(d: Optional[Dict], bold: bool = False) -> str:
    """A difference in percentage points, marked when its spread does not support it."""
    if d is None:
        return "—"
    text = f"{100 * d['delta']:+.1f} ± {100 * d['spread']:.1f}"
    if not d["supported"]:
        return text + " (within spread)"
    return f"**{text}**" if bold else text


def verdict(d: Optional[Dict]) -> str:
    """'higher' / 'lower' / 'no different (within spread)' for a difference a - b."""
    if d is None:
        return "not measured"
    if not d["supported"]:
        return "no different within the spread"
    return "higher" if d["delta"] > 0 else "lower"


def accuracies(runs: List[dict], key: str = "final_accuracy") -> Optional[Dict]:
    """Summary of one accuracy over a cell's seeds (a diverged run counts with its broken model's
    accuracy, about chance)."""
    values = [r[key] for r in runs if r.get(key) is not None]
    return summary(values)


def diverged_note(runs: List[dict]) -> str:
    count = sum(1 for r in runs if r["diverged"])
    return f" ({count}/{len(runs)} diverged)" if count else ""
