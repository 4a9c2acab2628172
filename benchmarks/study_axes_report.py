"""Tables, plot and REPORT.md paragraph of the study's batch-size and learning-rate axes
(benchmarks/study_axes.py): every number and every sentence comes from the runs in the JSON, as
mean ± spread over seeds (benchmarks/study_stats.py). Tables need no matplotlib; the plot imports
it when called."""
from collections import OrderedDict
from typing import Dict, List

from .common.figures import COLORS, pyplot, save_figure
from .common.markdown import markdown_table
from .study_stats import accuracies, difference, diverged_note, pct, pct_diff, verdict

# The axes' norms (benchmarks/study_axes.py) as their tables, figure and paragraph name them.
AXIS_NORM_LABELS = {"fused": "BatchNorm", "group_norm": "GroupNorm", "layer_norm": "LayerNorm",
                    "none": "no norm"}


def _by(runs: List[dict], key: str):
    """{norm: {key value: [runs over seeds]}} in first-seen order."""
    out = OrderedDict()
    for run in runs:
        out.setdefault(run["norm"], OrderedDict()).setdefault(run[key], []).append(run)
    return out


def _acc(groups, norm, value, key="final_accuracy"):
    runs = groups.get(norm, {}).get(value)
    return accuracies(runs, key) if runs else None


def _acc_cell(groups, norm, value, key="final_accuracy") -> str:
    runs = groups.get(norm, {}).get(value)
    return pct(accuracies(runs, key)) + diverged_note(runs) if runs else "—"


def _batch_table(axes: dict) -> str:
    batch = _by(axes["batch_axis"], "batch_size")
    sizes = sorted({r["batch_size"] for r in axes["batch_axis"]})
    small, large = sizes[0], sizes[-1]
    rows = []
    for norm in batch:
        rows.append([AXIS_NORM_LABELS[norm]] + [_acc_cell(batch, norm, b) for b in sizes]
                    + [pct_diff(difference(_acc(batch, norm, small), _acc(batch, norm, large)), True)])
    if "fused" in batch:
        key = "batch_statistics_accuracy"
        rows.append(["BatchNorm in training mode (batch statistics)"]
                    + [_acc_cell(batch, "fused", b, key) for b in sizes]
                    + [pct_diff(difference(_acc(batch, "fused", small, key),
                                           _acc(batch, "fused", large, key)), True)])
        rows.append(["BatchNorm train/eval gap (batch statistics − running statistics)"]
                    + [pct_diff(difference(_acc(batch, "fused", b, key), _acc(batch, "fused", b)), True)
                       for b in sizes] + [""])
        for other in ("group_norm", "none"):
            if other in batch:
                rows.append([f"BatchNorm − {AXIS_NORM_LABELS[other]}"]
                            + [pct_diff(difference(_acc(batch, "fused", b), _acc(batch, other, b)), True)
                               for b in sizes] + [""])
    seeds = len(axes["config"]["seeds"])
    return (f"**Batch-size axis** (test accuracy %, eval mode on running statistics unless said; "
            f"mean ± standard deviation over {seeds} seeds; differences in points, **bold** where "
            f"they exceed the summed spread; SGD lr {axes['base_lr']} x batch / "
            f"{axes['base_batch']}, momentum {axes['momentum']}, {axes['config']['train_images']} "
            f"images per cell)\n\n"
            + markdown_table(["norm"] + [f"batch {b}" for b in sizes] + [f"batch {small} − batch {large}"],
                             rows, "l" + "r" * (len(sizes) + 1)))


def _lr_table(axes: dict) -> str:
    lr = _by(axes["lr_axis"], "lr_multiplier")
    mults = sorted({r["lr_multiplier"] for r in axes["lr_axis"]})
    low, high = mults[0], mults[-1]
    rows = [[AXIS_NORM_LABELS[norm]] + [_acc_cell(lr, norm, m) for m in mults]
            + [pct_diff(difference(_acc(lr, norm, high), _acc(lr, norm, low)), True)] for norm in lr]
    if "fused" in lr and "none" in lr:
        rows.append(["BatchNorm − no norm"]
                    + [pct_diff(difference(_acc(lr, "fused", m), _acc(lr, "none", m)), True)
                       for m in mults] + [""])
    return (f"**Learning-rate axis** (test accuracy %, mean ± sd over {len(axes['config']['seeds'])} "
            f"seeds; batch {axes['base_batch']}, SGD momentum {axes['momentum']}; a diverged run "
            f"counts with its broken model's accuracy, about 10%)\n\n"
            + markdown_table(["norm"] + [f"{m:g}x lr ({m * axes['base_lr']:g})" for m in mults]
                             + [f"{high:g}x − {low:g}x"], rows, "l" + "r" * (len(mults) + 1)))


def axes_tables(axes: dict) -> str:
    return _batch_table(axes) + "\n\n" + _lr_table(axes)


def batch_axis_plot(axes: dict, path: str) -> str:
    """Accuracy vs batch size per norm, mean with ± sd error bars (BatchNorm in training mode
    dashed)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    batch = _by(axes["batch_axis"], "batch_size")
    for norm, by_size in batch.items():
        sizes = list(by_size)
        stats = [_acc(batch, norm, b) for b in sizes]
        ax.errorbar(sizes, [100 * s["mean"] for s in stats], [100 * s["sd"] for s in stats],
                    marker="o", capsize=3, color=COLORS.get(norm), label=AXIS_NORM_LABELS[norm])
        if norm == "fused":
            train = [_acc(batch, norm, b, "batch_statistics_accuracy") for b in sizes]
            ax.errorbar(sizes, [100 * s["mean"] for s in train], [100 * s["sd"] for s in train],
                        marker="s", capsize=3, linestyle="--", color=COLORS.get(norm),
                        label="BatchNorm, batch statistics")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (same images seen, lr scaled with batch)")
    ax.set_ylabel("test accuracy % (mean ± sd over seeds)")
    ax.set_title(f"Deep MLP, He init, ReLU, {len(axes['config']['seeds'])} seeds")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def headline(axes: dict) -> Dict:
    """The numbers the closing note quotes: BatchNorm vs GroupNorm at the smallest and largest
    batch, BatchNorm vs no norm at the largest learning rate."""
    batch = _by(axes["batch_axis"], "batch_size")
    lr = _by(axes["lr_axis"], "lr_multiplier")
    sizes = sorted({r["batch_size"] for r in axes["batch_axis"]})
    mults = sorted({r["lr_multiplier"] for r in axes["lr_axis"]})
    out = {"small": sizes[0], "large": sizes[-1], "high": mults[-1]}
    for name, size in (("small", sizes[0]), ("large", sizes[-1])):
        out[f"bn_{name}"] = _acc(batch, "fused", size)
        out[f"gn_{name}"] = _acc(batch, "group_norm", size)
        out[f"bn_gn_{name}"] = difference(out[f"bn_{name}"], out[f"gn_{name}"])
    out["bn_high"], out["none_high"] = _acc(lr, "fused", mults[-1]), _acc(lr, "none", mults[-1])
    out["bn_none_high"] = difference(out["bn_high"], out["none_high"])
    out["none_high_diverged"] = diverged_note(lr.get("none", {}).get(mults[-1], []))
    return out


def headline_text(axes: dict) -> str:
    h = headline(axes)
    diverged = h["none_high_diverged"].strip(" ()")
    return (f"BatchNorm vs GroupNorm at batch {h['small']}: {pct(h['bn_small'])}% vs "
            f"{pct(h['gn_small'])}% (difference {pct_diff(h['bn_gn_small'])} points); at batch "
            f"{h['large']}: {pct(h['bn_large'])}% vs {pct(h['gn_large'])}% (difference "
            f"{pct_diff(h['bn_gn_large'])} points). BatchNorm vs no norm at {h['high']:g}x lr: "
            f"{pct(h['bn_high'])}% vs {pct(h['none_high'])}% ("
            + (f"no norm {diverged}; " if diverged else "")
            + f"difference {pct_diff(h['bn_none_high'])} points).")


def _said(d, what: str) -> str:
    """'<what> by 12.3 ± 1.0 points' or '<what> no different (Δ 0.4 ± 1.2, within the spread)'."""
    if d is None:
        return f"{what}: not measured"
    if not d["supported"]:
        return (f"{what} no different within the spread (difference "
                f"{100 * d['delta']:+.1f} ± {100 * d['spread']:.1f} points)")
    return f"{what} {verdict(d)} by {abs(100 * d['delta']):.1f} ± {100 * d['spread']:.1f} points"


def axes_paragraph(axes: dict) -> str:
    """What the numbers show, and whether it agrees with the literature: every clause computed."""
    batch = _by(axes["batch_axis"], "batch_size")
    lr = _by(axes["lr_axis"], "lr_multiplier")
    sizes = sorted({r["batch_size"] for r in axes["batch_axis"]})
    mults = sorted({r["lr_multiplier"] for r in axes["lr_axis"]})
    small, large, low, high = sizes[0], sizes[-1], mults[0], mults[-1]
    bn_drop = difference(_acc(batch, "fused", small), _acc(batch, "fused", large))
    gn_drop = difference(_acc(batch, "group_norm", small), _acc(batch, "group_norm", large))
    bn_gn = difference(_acc(batch, "fused", small), _acc(batch, "group_norm", small))
    gap = difference(_acc(batch, "fused", small, "batch_statistics_accuracy"), _acc(batch, "fused", small))
    text = [f"Batch size (same images, learning rate scaled with the batch): "
            f"{_said(bn_drop, f'BatchNorm at batch {small} is, against batch {large},')}; "
            f"{_said(gn_drop, 'GroupNorm is')}; at batch {small} "
            f"{_said(bn_gn, 'BatchNorm is, against GroupNorm,')}. "
            f"At batch {small} BatchNorm evaluated with batch statistics (as it trained) instead of "
            f"its running statistics is {verdict(gap)}"
            + ("" if gap is None or not gap['supported'] else f" ({pct_diff(gap)} points)") + "."]
    gaps = {b: difference(_acc(batch, "fused", b, "batch_statistics_accuracy"), _acc(batch, "fused", b))
            for b in sizes}
    worse = [b for b, d in gaps.items() if d is not None and d["supported"] and d["delta"] < 0]
    better = [b for b, d in gaps.items() if d is not None and d["supported"] and d["delta"] > 0]
    if worse or better:
        parts = [f"below the running statistics beyond the spread at batch {', '.join(map(str, worse))}"
                 if worse else "", f"above them at batch {', '.join(map(str, better))}" if better else ""]
        text.append("BatchNorm evaluated on test batches' own statistics is "
                    + " and ".join(p for p in parts if p)
                    + (": here the running averages are not what costs accuracy at small batches, "
                       "the network trained on noisy batch statistics is weak either way (Ioffe's "
                       "Batch Renormalization blames the mismatch between the two; this result "
                       "does not show that mismatch costing accuracy)." if worse and not better
                       else "."))
    wu_he = (bn_drop is not None and bn_drop["supported"] and bn_drop["delta"] < 0
             and bn_gn is not None and bn_gn["supported"] and bn_gn["delta"] < 0)
    gn_flat = gn_drop is not None and (not gn_drop["supported"] or gn_drop["delta"] > 0)
    if wu_he and gn_flat:
        text.append("This agrees with Wu & He: BatchNorm loses accuracy at tiny batches, "
                    "GroupNorm does not lose any beyond the spread.")
    elif wu_he:
        text.append("This agrees with Wu & He on BatchNorm's loss at tiny batches, but GroupNorm "
                    "does not stay flat here, which disagrees with them.")
    else:
        text.append("This disagrees with Wu & He (BatchNorm's accuracy falls at tiny batches, "
                    "below GroupNorm's): the difference above is not there or not beyond the spread.")
    below = [b for b in sizes if (lambda d: d is not None and d["supported"] and d["delta"] < 0)(
        difference(_acc(batch, "fused", b), _acc(batch, "group_norm", b)))]
    if below:
        text.append(f"BatchNorm is below GroupNorm beyond the spread at batch "
                    f"{', '.join(map(str, below))} (Wu & He see it below batch ~8).")
    if wu_he and bn_drop["delta"] < -0.2:
        text.append("The drop is far larger than theirs (a few points on ImageNet): in an MLP a "
                    f"batch of {small} gives each feature {small} values to normalise, where a "
                    "CNN's BatchNorm also averages over the image's positions.")
    bn_none = difference(_acc(lr, "fused", high), _acc(lr, "none", high))
    bn_cost = difference(_acc(lr, "fused", high), _acc(lr, "fused", low))
    none_runs = lr.get("none", {}).get(high, [])
    text.append(f"Learning rate: at {high:g}x the base rate {_said(bn_none, 'BatchNorm is, against no norm,')}"
                f"{diverged_note(none_runs).replace(' (', ' (no norm: ')}; "
                f"{_said(bn_cost, f'BatchNorm at {high:g}x is, against its own {low:g}x,')}.")
    if bn_none is not None and bn_none["supported"] and bn_none["delta"] > 0:
        text.append(f"This agrees with Ioffe & Szegedy: BatchNorm keeps training at a rate "
                    f"({high:g}x) where the network without it "
                    + ("diverges." if any(r["diverged"] for r in none_runs) else "falls behind."))
    else:
        text.append(f"This disagrees with Ioffe & Szegedy: at {high:g}x BatchNorm's advantage "
                    "over no norm is not beyond the spread.")
    if bn_cost is not None and bn_cost["supported"] and bn_cost["delta"] < 0:
        text.append(f"BatchNorm still pays for the {high:g}x rate here with accuracy lost against "
                    f"{low:g}x within this short schedule; Ioffe & Szegedy's BN-x30 trained "
                    "far longer and lowered its rate during training.")
    return " ".join(text)
