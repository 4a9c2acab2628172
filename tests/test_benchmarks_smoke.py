"""Smoke tests of every benchmark entry point on tiny sizes, so the suite cannot rot: the IDX
reader on generated files, the models, one training step, the study, the microbenchmark harness,
the report writer (and the plots, when matplotlib is installed)."""
import gzip
import os

import numpy as np
import pytest
import torch

from benchmarks import (cases, data, host_overhead, microbench, models, report, run, study, tables,
                        train, trainer)
from benchmarks.common.results import load_json, save_json

THREADS = ["--threads", str(torch.get_num_threads()), "--no-progress"]  # leave the session's own


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory):
    return data.make_fake_dataset(str(tmp_path_factory.mktemp("fmnist")), train=96, test=40)


@pytest.fixture(scope="module")
def fake_data(fake_dir):
    return data.load_fashion_mnist(fake_dir, counts=None)


# --- the IDX reader ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, ">i4", ">f4"])
def test_idx_round_trip(tmp_path, name, dtype):
    array = (np.arange(2 * 3 * 4) % 251).astype(dtype).reshape(2, 3, 4)
    data.write_idx(str(tmp_path / name), array)
    np.testing.assert_array_equal(data.read_idx(str(tmp_path / name)), array)


def test_idx_truncated_file_says_how_to_install(tmp_path):
    path = str(tmp_path / "bad-idx3-ubyte.gz")
    data.write_idx(path, np.zeros((4, 28, 28), np.uint8))
    with gzip.open(path, "rb") as f:
        payload = f.read()
    with gzip.open(path, "wb") as f:
        f.write(payload[:-10])
    with pytest.raises(data.DataMissingError, match="apt-get install -y dataset-fashion-mnist"):
        data.read_idx(path)


def test_missing_folder_and_wrong_counts(tmp_path, fake_dir):
    with pytest.raises(data.DataMissingError, match="does not exist.*dataset-fashion-mnist"):
        data.load_fashion_mnist(str(tmp_path / "nowhere"))
    with pytest.raises(data.DataMissingError, match="96 images, expected 60000"):
        data.load_fashion_mnist(fake_dir)  # the published counts are checked by default


def test_normalisation_uses_training_mean_and_std(fake_dir, fake_data):
    images, _ = data.read_split(fake_dir, "train")
    scaled = images / 255.0
    assert fake_data.mean == pytest.approx(scaled.mean())
    assert fake_data.std == pytest.approx(scaled.std())
    assert fake_data.train_x.shape == (96, 1, 28, 28) and fake_data.test_y.shape == (40,)
    assert float(fake_data.train_x.mean()) == pytest.approx(0.0, abs=1e-5)


# --- models ------------------------------------------------------------------------------------

@pytest.mark.parametrize("build", [
    lambda norm: models.ConvNet(norm, "relu", (4, 8), 1),
    lambda norm: models.DeepMLP(norm, "tanh", depth=3, width=16),
])
def test_fused_and_torch_models_share_weights_and_outputs(build):
    torch.manual_seed(0)
    reference, fused = build("torch"), build("fused")
    assert list(reference.state_dict()) == list(fused.state_dict())
    fused.load_state_dict(reference.state_dict())
    x = torch.randn(6, 1, 28, 28)
    torch.testing.assert_close(fused(x), reference(x), rtol=1e-5, atol=1e-5)


def test_init_schemes():
    mlp = models.init_weights(models.DeepMLP("none", "relu", depth=2, width=400), "normal")
    assert mlp.hidden[2].weight.std().item() == pytest.approx(1.0, rel=0.05)
    models.init_weights(mlp, "kaiming")
    assert mlp.hidden[2].weight.std().item() == pytest.approx((2 / 400) ** 0.5, rel=0.05)
    assert mlp.hidden[2].bias.abs().max().item() == 0
    with pytest.raises(ValueError, match="init must be one of"):
        models.init_weights(mlp, "orthogonal")
    with pytest.raises(ValueError, match="norm must be one of"):
        models.norm_act("layer", 2, 4, "relu")


# --- training benchmark and study --------------------------------------------------------------

def test_training_comparison_one_epoch(fake_data):
    result = train.compare(fake_data.train_x, fake_data.train_y, fake_data.test_x,
                           fake_data.test_y, torch.device("cpu"), (4, 8), 1, epochs=1,
                           batch_size=32, reference_steps=2, progress=False, warmup_steps=1)
    assert result["steps"] == 3 and result["reference_steps"] == 2
    for stats in result["norms"].values():
        assert len(stats["losses"]) == 3 and stats["images_per_s"] > 0
        assert stats["saved_for_backward_bytes"] > 0
        assert len(stats["test_accuracy_per_epoch"]) == 1
    assert result["curves_overlap"], result
    assert "overlap" in tables.train_table({"synthetic": [dict(result, image_size=28)]})


def test_study_one_run_each_model(fake_data):
    for kind in study.MODELS:
        result = study.run_one(kind, "xavier", "fused", "tanh", 0, fake_data, torch.device("cpu"),
                               epochs=1, eval_images=16, eval_every=1, target=0.0)
        assert result["steps"] == 96 // study.BATCH_SIZE
        assert result["steps_to_target"] == 0 and len(result["epoch_accuracy"]) == 1
        assert len(result["grad_norms"]) == len(models.weight_layers(
            study.build_model(kind, "fused", "tanh", "xavier", 0)))


# --- microbenchmarks ---------------------------------------------------------------------------

def test_case_tables():
    shapes = cases.resnet50_bn_shapes()
    assert len(shapes) == 12 and shapes[0][:3] == (64, 112, 112) and shapes[-1][:3] == (2048, 7, 7)
    headline = cases.headline_cases()
    assert len(headline) == 8 and all(c.headline and c.activation == "relu" for c in headline)
    assert {c.shape for c in headline} == {(32, 64, 56, 56), (64, 256, 14, 14), (256, 512)}


def test_bytes_moved():
    case = cases.Case((2, 3, 4, 5), mode="fwd_bwd", residual=True)
    assert microbench.bytes_moved(case) == 12 * 120 * 4
    assert microbench.bytes_moved(cases.Case((2, 3), dtype="bfloat16", mode="fwd_eval")) == 2 * 6 * 2


@pytest.mark.parametrize("case", [
    cases.Case((4, 8, 5, 5), "silu", True, "float32", "channels_last", "fwd_bwd"),
    cases.Case((16, 8), "gelu", False, "bfloat16", "nchw", "fwd_eval"),
    cases.Case((2, 4, 3, 4, 4), "relu", False, "float32", "channels_last", "fwd_train"),
])
def test_run_case(case):
    rows = microbench.run_case(case, torch.device("cpu"), "none", 10.0, repeats=3, max_case_s=1)
    assert [r["contender"] for r in rows] == ["fused", "eager"]
    assert rows[1]["speedup_vs_eager"] == 1.0 and rows[0]["gbps"] > 0
    assert rows[0]["max_abs_diff_fused_vs_eager"] < (0.1 if case.dtype == "bfloat16" else 1e-4)


def test_microbench_cli_and_report(tmp_path):
    out = str(tmp_path)
    microbench.main(["--limit", "1", "--compile", "none", "--repeats", "3", "--out", out] + THREADS)
    result = load_json(out, "microbench.json")
    assert result["copy_bandwidth"]["gbps"] > 0 and len(result["rows"]) == 2
    path = report.write_report(out, plots=False)
    text = open(path).read()
    assert "## Headline" in text and "32x64x56x56" in text and "copy bandwidth" in text


def test_report_writer_with_every_section(tmp_path, fake_data):
    out = str(tmp_path)
    save_json(out, "train.json", {"config": {"widths": [4], "blocks": 1, "batch_size": 32},
                                  "device": "cpu", "synthetic": [], "data": {
                                      "train_images": 96, "test_images": 40, "mean": 0.5,
                                      "std": 0.3, "dir": "x"},
                                  "fashion_mnist": train.compare(
                                      fake_data.train_x, fake_data.train_y, None, None,
                                      torch.device("cpu"), (4,), 1, 1, 32, progress=False)})
    config = dict(study.QUICK, models=("mlp",), eval_every=1, eval_images=8)
    small = data.Dataset(fake_data.train_x[:64], fake_data.train_y[:64], fake_data.test_x,
                         fake_data.test_y, fake_data.mean, fake_data.std, "fake")
    save_json(out, "study.json", study.run_study(small, torch.device("cpu"), config,
                                                 inits=("normal",), activations=("relu",),
                                                 progress=False))
    text = open(report.write_report(out, plots=False, run_info={"skipped": {"x": "why"}})).read()
    assert "## Training benchmark" in text and "## Training study" in text
    assert "**x skipped**: why" in text and "| relu | normal |" in text


def test_run_without_data_still_reports(tmp_path):
    out = str(tmp_path)
    run.main(["--skip", "microbench", "cpu_dtypes", "host_overhead", "study", "--data-dir",
              str(tmp_path / "none"),
              "--out", out] + THREADS)
    text = open(os.path.join(out, "REPORT.md")).read()
    assert "Fashion-MNIST training benchmark skipped" in text and "apt-get" in text
    assert load_json(out, "train.json")["synthetic"]


def test_plots(tmp_path, fake_data):
    pytest.importorskip("matplotlib")
    from benchmarks import plots

    config = dict(study.QUICK, models=("mlp",), eval_every=1, eval_images=8)
    result = study.run_study(fake_data, torch.device("cpu"), config, inits=("default",),
                             activations=("relu", "tanh"), progress=False)
    made = plots.all_plots(str(tmp_path), study=result)
    assert set(made) == {"study_mlp", "grad_mlp"}
    for name in made.values():
        assert os.path.getsize(tmp_path / name) > 1000


def test_cpu_dtypes_table(capsys):
    from benchmarks import cpu_dtypes

    rows = cpu_dtypes.run(torch.get_num_threads(), 2, 3, list(cpu_dtypes.DTYPES), shapes=[(4, 3, 3, "tiny")])
    assert [(r["layout"], r["dtype"]) for r in rows] == [
        (layout, dtype) for layout in ("nchw", "channels_last") for dtype in cpu_dtypes.DTYPES]
    assert all(r["eager_ms"] > 0 and r["fused_ms"] > 0 and r["speedup"] > 0 for r in rows)
    assert "| 4x3x3 | channels_last | bfloat16 |" in capsys.readouterr().out


def test_cpu_dtypes_and_host_overhead_rows_in_report(tmp_path):
    # make bench's CPU stages on a tiny shape and few repeats, then their REPORT.md sections.
    out = str(tmp_path)
    dtypes = run.cpu_dtypes_stage(True, torch.get_num_threads(), batch=2,
                                  shapes=[(4, 3, 3, "tiny")], copy_bytes=1 << 20)
    assert {r["dtype"] for r in dtypes["rows"]} == set(dtypes["copy_bandwidth"]) == {
        "float32", "bfloat16", "float16"}
    assert all(r["gbps"] > 0 and r["pct_copy_bw"] > 0 for r in dtypes["rows"])
    save_json(out, run.STAGE_FILES["cpu_dtypes"], dtypes)
    host = host_overhead.run(repeats=3)
    layer = next(iter(host["cases"].values()))
    assert layer["fused"]["ops"] > 0 and layer["host_ratio_cpu"] > 0
    save_json(out, run.STAGE_FILES["host_overhead"], host)
    text = open(report.write_report(out, plots=False)).read()
    assert "## CPU: float32, bfloat16 and float16" in text and "| 4x3x3 | channels_last | float16 |" in text
    assert "- bfloat16: speed-up min" in text and "copy bandwidth" in text
    assert "## Host overhead" in text and "| layer BatchNormAct2d(16)" in text
