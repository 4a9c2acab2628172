"""The training study end to end on a tiny generated data set: its tables, sentences and headline
are computed from the JSON it wrote (change a number there and they change), and the spread rule
marks what the seeds do not support."""
import json
import os

import pytest
import torch

from benchmarks import data, report, study, study_axes
from benchmarks.common.results import load_json, save_json
from benchmarks.study_axes_report import axes_paragraph, axes_tables, headline_text
from benchmarks.study_report import grid_paragraph, grid_tables
from benchmarks.study_stats import difference, pct_diff, summary


def test_spread_rule():
    a, b = summary([0.80, 0.82, 0.84]), summary([0.70, 0.71, 0.72])
    assert a["mean"] == pytest.approx(0.82) and a["sd"] == pytest.approx(0.02)
    d = difference(a, b)
    assert d["supported"] and d["delta"] == pytest.approx(0.11) and d["spread"] == pytest.approx(0.03)
    assert pct_diff(d) == "+11.0 ± 3.0"
    close = difference(summary([0.80, 0.90]), summary([0.84, 0.86]))
    assert not close["supported"] and pct_diff(close).endswith("(within spread)")
    # One seed has no spread: nothing it shows counts as supported.
    assert not difference(summary([0.9]), summary([0.1]))["supported"]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """A whole (tiny) study: both axes and the grid, 2 seeds, written as study.json."""
    out = tmp_path_factory.mktemp("study")
    folder = data.make_fake_dataset(str(out / "fmnist"), train=64, test=16)
    fake = data.load_fashion_mnist(folder, counts=None)
    device = torch.device("cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        axes = study_axes.run_axes(fake, device, dict(
            study_axes.QUICK, eval_images=16, evals_per_run=1, batch_sizes=(4, 32),
            lr_multipliers=(1, 30), seeds=(0, 1)), progress=False)
        config = dict(study.QUICK, seeds=(0, 1), eval_every=1, eval_images=16)
        result = study.run_study(fake, device, config, inits=("normal", "kaiming"),
                                 activations=("relu",), progress=False)
    finally:
        torch.set_num_threads(threads)
    result["axes"] = axes
    save_json(str(out), "study.json", result)
    return str(out)


def _set(runs, accuracies, key="final_accuracy", **match):
    """Overwrites key of the runs matching `match`, one value per seed in order."""
    chosen = [r for r in runs if all(r[k] == v for k, v in match.items())]
    assert len(chosen) == len(accuracies)
    for run, value in zip(chosen, accuracies):
        run[key] = value


def _report(folder: str) -> str:
    return open(report.write_report(folder, plots=False, published_dir=folder + "/none")).read()


def test_tables_and_claims_follow_the_json(tiny_study, tmp_path):
    result = load_json(tiny_study, "study.json")
    batch, lr = result["axes"]["batch_axis"], result["axes"]["lr_axis"]
    # BatchNorm far below GroupNorm at batch 4, equal at 32; no norm diverges at 30x.
    _set(batch, [0.30, 0.32], norm="fused", batch_size=4)
    _set(batch, [0.80, 0.82], norm="group_norm", batch_size=4)
    _set(batch, [0.81, 0.83], norm="fused", batch_size=32)
    _set(batch, [0.80, 0.82], norm="group_norm", batch_size=32)
    _set(lr, [0.75, 0.77], norm="fused", lr_multiplier=30)
    _set(lr, [0.10, 0.10], norm="none", lr_multiplier=30)
    _set(batch, [0.20, 0.21], "batch_statistics_accuracy", norm="fused", batch_size=4)
    _set(batch, [0.81, 0.83], "batch_statistics_accuracy", norm="fused", batch_size=32)
    folder = str(tmp_path / "edited")
    os.makedirs(folder)
    with open(os.path.join(folder, "study.json"), "w") as f:
        json.dump(result, f)
    text = _report(folder)
    assert "| BatchNorm | 31.0 ± 1.4 | 82.0 ± 1.4 | **-51.0 ± 2.8** |" in text
    assert "| BatchNorm − GroupNorm | **-50.0 ± 2.8** | +1.0 ± 2.8 (within spread) |  |" in text
    assert ("BatchNorm vs GroupNorm at batch 4: 31.0 ± 1.4% vs 81.0 ± 1.4% (difference -50.0 ± 2.8 "
            "points)") in text
    assert "BatchNorm vs no norm at 30x lr: 76.0 ± 1.4% vs 10.0 ± 0.0%" in text
    assert "at batch 4 BatchNorm is, against GroupNorm, lower by 50.0 ± 2.8 points" in text
    assert "This agrees with Wu & He" in text and "This agrees with Ioffe & Szegedy" in text
    assert "| BatchNorm train/eval gap (batch statistics − running statistics) | **-10.5 ± 2.1** |" in text
    assert "own statistics is below the running statistics beyond the spread at batch 4:" in text

    # The opposite numbers give the opposite sentences.
    _set(batch, [0.90, 0.91], norm="fused", batch_size=4)
    _set(lr, [0.10, 0.10], norm="fused", lr_multiplier=30)
    paragraph = axes_paragraph(result["axes"])
    assert "against GroupNorm, higher by 9.5" in paragraph
    assert "This disagrees with Wu & He" in paragraph
    assert "This disagrees with Ioffe & Szegedy" in paragraph
    assert "91" not in axes_tables(load_json(folder, "study.json")["axes"])
    assert "90.5 ± 0.7" in axes_tables(result["axes"]) and "90.5 ± 0.7%" in headline_text(result["axes"])


def test_grid_claims_follow_the_json(tiny_study):
    result = load_json(tiny_study, "study.json")
    runs = result["runs"]
    _set(runs, [0.50, 0.52], norm="none", init="normal")
    _set(runs, [0.85, 0.86], norm="fused", init="normal")
    _set(runs, [0.85, 0.86], norm="none", init="kaiming")
    _set(runs, [0.70, 0.71], norm="fused", init="kaiming")
    table = grid_tables(result)
    assert "| relu | normal | 51.0 ± 1.4 | 85.5 ± 0.7 | **+34.5 ± 2.1** |" in table
    assert "| relu | kaiming | 85.5 ± 0.7 | 70.5 ± 0.7 | **-15.0 ± 1.4** |" in table
    paragraph = grid_paragraph(result)
    assert "beats no BN beyond the spread in 1 of 2" in paragraph
    assert "loses beyond it in 1: relu + kaiming (70.5 ± 0.7% vs 85.5 ± 0.7%)" in paragraph
    assert "disagrees with the lecture" in paragraph
    assert "spans 51.0–85.5% without BatchNorm and 70.5–85.5% with it" in paragraph


def test_report_quotes_the_published_run(tiny_study, tmp_path):
    """The quick report quotes the committed full run's headline, command and machine."""
    published = str(tmp_path / "published")
    result = load_json(tiny_study, "study.json")
    _set(result["axes"]["batch_axis"], [0.123, 0.123], norm="fused", batch_size=4)
    save_json(published, "study.json", result)
    save_json(published, "run.json", {"wall_s": 600.0})
    text = open(report.write_report(tiny_study, plots=False, published_dir=published)).read()
    assert "Full (\"paper\") run, committed" in text and "wall 10 min" in text
    assert "Headline (full run): BatchNorm vs GroupNorm at batch 4: 12.3 ± 0.0%" in text
    assert "python -m benchmarks.run --full" in text
