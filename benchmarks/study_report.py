"""Tables and sentences of the study's init x activation x BatchNorm grid (benchmarks/study.py),
and the committed full ("paper") run the quick report quotes: every number and sentence computed
from the runs in the JSON, as mean ± spread over seeds (benchmarks/study_stats.py)."""
import math
import os
from collections import OrderedDict
from typing import List, Optional

from .common.markdown import fmt, markdown_table, median
from .common.results import BENCHMARKS_DIR, load_json
from .study_stats import accuracies, difference, diverged_note, pct, pct_diff

# The study's norms as its tables and figures name them (the axes name theirs in
# study_axes_report.AXIS_NORM_LABELS).
STUDY_NORM_LABELS = {"none": "no BN", "fused": "BN (fused)", "torch": "BN (torch)"}
# Where the committed full-mode run lives (benchmarks/results/ is the gitignored default --out).
PUBLISHED_DIR = os.path.join(BENCHMARKS_DIR, "published", "study")
PUBLISHED_COMMAND = ("python -m benchmarks.run --full --skip microbench train --threads 1 "
                     "--out benchmarks/published/study")


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
        return "never"
    text = fmt(median(reached))
    return text if len(reached) == len(runs) else f"{text} ({len(reached)}/{len(runs)})"


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


def _norms(runs: List[dict]) -> List[str]:
    """The grid's norms, the un-normalised baseline first."""
    norms = list(OrderedDict.fromkeys(r["norm"] for r in runs))
    return sorted(norms, key=lambda n: n != "none")


def grid_tables(result: dict) -> str:
    """Per model: final test accuracy mean ± sd per norm, each BatchNorm's difference from no BN,
    steps to the target (median over seeds) and the gradient ratio."""
    groups = group_runs(result["runs"])
    out = []
    for model in OrderedDict.fromkeys(k[0] for k in groups):
        runs = [r for r in result["runs"] if r["model"] == model]
        norms, target = _norms(runs), runs[0]["target"]
        base = norms[0]
        header = ["activation", "init"] + [f"{STUDY_NORM_LABELS.get(n, n)} acc %" for n in norms]
        header += [f"{STUDY_NORM_LABELS.get(n, n)} − {STUDY_NORM_LABELS.get(base, base)}"
                   for n in norms[1:]]
        header += [f"{STUDY_NORM_LABELS.get(n, n)}: steps to {100 * target:.0f}%" for n in norms]
        header += [f"{STUDY_NORM_LABELS.get(n, n)}: grad layer 2 / layer L" for n in norms]
        rows = []
        for (kind, activation, init), by_norm in groups.items():
            if kind != model:
                continue
            cells = [by_norm.get(n) for n in norms]
            row = [activation, init]
            row += [pct(accuracies(c)) + diverged_note(c) if c else "—" for c in cells]
            row += [pct_diff(difference(accuracies(c), accuracies(cells[0])), True) if c and cells[0]
                    else "—" for c in cells[1:]]
            row += [_steps_cell(c) if c else "—" for c in cells]
            row += [_grad_ratio_cell(c) if c else "—" for c in cells]
            rows.append(row)
        seeds = sorted({r["seed"] for r in runs})
        out.append(f"**{model.upper()}** (final test accuracy %, mean ± sd over seeds "
                   f"{', '.join(map(str, seeds))}; differences in points, **bold** where they exceed "
                   f"the summed spread; steps of batch {result['batch_size']} to the target, median "
                   f"over seeds, (k/n) when only k reached it)\n\n"
                   + markdown_table(header, rows, "ll" + "r" * (len(header) - 2)))
    return "\n\n".join(out)


def grid_paragraph(result: dict) -> str:
    """Per model and BatchNorm: in how many (activation, init) cells it beats no BN beyond the
    spread, ties, or loses (those named: the lecture says BatchNorm makes the start matter less),
    and how far the init moves the accuracy with and without it."""
    text = []
    groups = group_runs(result["runs"])
    for model in OrderedDict.fromkeys(k[0] for k in groups):
        runs = [r for r in result["runs"] if r["model"] == model]
        norms = _norms(runs)
        if norms[0] != "none" or len(norms) < 2:
            continue
        for norm in norms[1:]:
            label = STUDY_NORM_LABELS.get(norm, norm)
            wins, ties, losses, spans = [], [], [], {"none": {}, norm: {}}
            for (kind, activation, init), by_norm in groups.items():
                if kind != model or norm not in by_norm or "none" not in by_norm:
                    continue
                a, b = accuracies(by_norm[norm]), accuracies(by_norm["none"])
                d = difference(a, b)
                cell = f"{activation} + {init} ({pct(a)}% vs {pct(b)}%)"
                (ties if not d["supported"] else wins if d["delta"] > 0 else losses).append(cell)
                for key, s in (("none", b), (norm, a)):
                    spans[key].setdefault(activation, []).append(s["mean"])
            total = len(wins) + len(ties) + len(losses)
            line = (f"{model.upper()}: {label} beats no BN beyond the spread in {len(wins)} of "
                    f"{total} (activation, init) cells, is within the spread in {len(ties)}, and "
                    f"loses beyond it in {len(losses)}")
            line += (": " + "; ".join(losses) + ". That disagrees with the lecture's claim that "
                     "BatchNorm helps whatever the start." if losses else ".")
            text.append(line)
            for activation in spans["none"]:
                lo_none, hi_none = min(spans["none"][activation]), max(spans["none"][activation])
                lo_bn, hi_bn = min(spans[norm][activation]), max(spans[norm][activation])
                smaller = (hi_bn - lo_bn) < (hi_none - lo_none)
                text.append(f"{activation}: across the inits the mean accuracy spans "
                            f"{100 * lo_none:.1f}–{100 * hi_none:.1f}% without BatchNorm and "
                            f"{100 * lo_bn:.1f}–{100 * hi_bn:.1f}% with it ("
                            + ("the init matters less with BatchNorm, as the lecture says)."
                               if smaller else "the init matters no less with BatchNorm, which "
                               "disagrees with the lecture)."))
    return " ".join(text)


def load_published(folder: Optional[str] = None) -> Optional[dict]:
    """The committed full run's study.json (with run.json's wall time), or None."""
    folder = folder or PUBLISHED_DIR
    study = load_json(folder, "study.json")
    if study is not None:
        study["run"] = load_json(folder, "run.json") or {}
    return study
