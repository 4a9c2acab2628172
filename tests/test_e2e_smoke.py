"""Smoke tests of the end-to-end benchmark (benchmarks.e2e) and the saved-tensor census
(benchmarks.saved_tensors) on tiny CPU sizes, so both keep running where CI runs."""
import json
import os

import pytest
import torch.nn as nn

import pyfusedbn
from benchmarks import e2e, saved_tensors
from benchmarks.resnet import ResNet50

TINY = ["--device", "cpu", "--quick", "--no-compile", "--warmup", "0", "--steps", "1",
        "--batch", "2", "--size", "32"]


def test_e2e_quick_cpu_runs_every_row_and_writes_json(tmp_path):
    report = e2e.main(TINY + ["--out", str(tmp_path)])
    with open(os.path.join(tmp_path, "e2e.json")) as f:
        written = json.load(f)
    assert [(r["model"], r["variant"]) for r in written["rows"]] == [
        ("resnet50", "eager"), ("resnet50", "converted"),
        ("stack3", "torch"), ("stack3", "fused"), ("stack3", "memory_efficient")]
    rows = {(r["model"], r["variant"]): r for r in report["rows"]}
    for row in rows.values():
        assert row["step_ms"] > 0 and row["images_per_s"] > 0, row
        assert row["peak_mib"] is None  # CPU: no allocator statistics
    assert rows["resnet50", "eager"]["speedup"] == 1.0
    # What the memory-saving mode is for: the stack's fused layers keep y instead of x.
    assert rows["stack3", "memory_efficient"]["saved_mib"] < rows["stack3", "fused"]["saved_mib"]


def test_e2e_budget_skips_rows(tmp_path):
    report = e2e.main(TINY + ["--budget-s", "0", "--out", str(tmp_path)])
    assert all(r.get("skipped") == "time budget spent" for r in report["rows"])


def test_memory_efficient_switches_only_invertible_activations():
    model = pyfusedbn.convert(nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.LeakyReLU(),
        nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU()))
    fused = [m for m in model.modules() if isinstance(m, pyfusedbn.BatchNormAct2d)]
    assert e2e.memory_efficient(model) == 1
    assert [m.memory_efficient for m in fused] == [True, False]


def test_our_resnet50_has_torchvisions_layout():
    model = ResNet50(width=64)
    # torchvision.models.resnet50(): 25,557,032 parameters, 53 BatchNorm2d layers.
    assert sum(p.numel() for p in model.parameters()) == 25_557_032
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 53


@pytest.mark.parametrize("residual", [True, False])
def test_saved_tensor_census_attributes_every_saved_tensor(residual):
    report = saved_tensors.run("resnet50", width=4, batch=2, size=32, residual=residual)
    for name in ("eager", "converted"):
        records = report["results"][name]["records"]
        assert records and all(r["op"] != "?" for r in records), name
        groups = report["by_savers"][name]
        # The partition by savers accounts for every saved byte exactly once.
        assert sum(g["bytes"] for g in groups.values()) == report["results"][name]["unique_bytes"]
    eager = report["by_savers"]["eager"]
    # Eager ResNet: each BatchNorm saves its input, each convolution its input and weight.
    assert "batchnorm/input" in eager and "Convolution/weight" in eager
    converted = report["results"]["converted"]["records"]
    # The fused layer saves its input: through the Python autograd.Function or the C++ node.
    assert any("BatchNormAct" in r["op"] and r["role"] == "input" for r in converted)
    if not residual:
        # Without a residual, the fused layers save nothing the eager ones did not.
        unique = {name: report["results"][name]["unique_bytes"] for name in ("eager", "converted")}
        assert unique["converted"] <= unique["eager"]


def test_converted_resnet_saves_no_more_than_eager():
    report = saved_tensors.run("resnet50", width=4, batch=2, size=32, residual=True)
    unique = {name: report["results"][name]["unique_bytes"] for name in ("eager", "converted")}
    assert unique["converted"] <= unique["eager"], unique
