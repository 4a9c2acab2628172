"""The training study's batch-size and learning-rate axes end to end on a tiny generated data
set: every cell runs, the tables, the plot and the REPORT paragraph come out of the numbers; and
the microbenchmark for GroupNorm runs a case and reports sane numbers."""
import torch

from benchmarks import data, group_norm_bench, plots, study_axes, study_axes_report
from benchmarks.models import ConvNet


def test_axes_run_and_report(tmp_path):
    # Two points per axis and two seeds keep this a smoke test.
    folder = data.make_fake_dataset(str(tmp_path / "fmnist"), train=64, test=16)
    fake = data.load_fashion_mnist(folder, counts=None)
    config = dict(study_axes.QUICK, eval_images=16, evals_per_run=1, batch_sizes=(4, 64),
                  lr_multipliers=(1, 30), seeds=(0, 1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny layers: threads only add synchronisation on a busy machine
    try:
        axes = study_axes.run_axes(fake, torch.device("cpu"), config, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert len(axes["batch_axis"]) == len(study_axes.BATCH_NORMS) * 2 * 2
    assert len(axes["lr_axis"]) == len(study_axes.LR_NORMS) * 2 * 2
    for run in axes["batch_axis"]:
        # Same images per cell: steps x batch is the data set, the rate scales with the batch.
        assert run["steps"] * run["batch_size"] == 64 or run["diverged"]
        assert run["lr"] == study_axes.BASE_LR * run["batch_size"] / study_axes.BASE_BATCH
        # BatchNorm's train/eval gap: every BatchNorm cell is also evaluated on batch statistics.
        assert ("batch_statistics_accuracy" in run) == (run["norm"] == "fused")
    text = study_axes_report.axes_tables(axes)
    assert "Batch-size axis" in text and "Learning-rate axis" in text and "GroupNorm" in text
    assert "30x lr" in text
    paragraph = study_axes_report.axes_paragraph(axes)
    assert "BatchNorm at batch 4 is, against batch 64," in paragraph and "GroupNorm is" in paragraph
    assert "Wu & He" in paragraph and "Ioffe & Szegedy" in paragraph
    made = plots.all_plots(str(tmp_path), study={"runs": [], "axes": axes})
    assert made["study_batch_axis"] == "study_batch_axis_accuracy.png"
    assert (tmp_path / made["study_batch_axis"]).exists()


def test_models_take_group_and_layer_norm():
    for norm in ("group_norm", "layer_norm"):
        model = ConvNet(norm, "relu", (16, 32), 1, residual=True)
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_group_norm_bench_runs_one_case():
    steps, compile_s, diff, nbytes = group_norm_bench.build_steps(
        (2, 64, 8, 8), "float32", "nhwc", torch.device("cpu"), with_compile=False)
    assert set(steps) == {"fused", "eager"} and compile_s is None
    assert diff < 1e-4 and nbytes == 2 * 64 * 8 * 8 * 4
    for step in steps.values():
        step()
