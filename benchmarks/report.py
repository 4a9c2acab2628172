"""results/REPORT.md: the tables, the plots, the command and the machine, from the JSON files the
entry points wrote.

    python -m benchmarks.report [--out benchmarks/results] [--no-plots]
"""
import argparse
import os
from typing import Dict, List, Optional

from . import model_zoo as model_zoo_section, tables
from .common.results import load_json
from .plots import all_plots
from .study_axes_report import axes_paragraph

REPORT_NAME = "REPORT.md"


def _machine_lines(machine: dict) -> List[str]:
    lines = [f"- machine: {machine['cpu']} ({machine['cpu_count']} cores visible, torch threads "
             f"{machine['torch_threads']}), host {machine['host']}",
             f"- software: Python {machine['python']}, torch {machine['torch']}, pyfusedbn "
             f"{machine['pyfusedbn']} (backends {machine['backends']}), git {machine['git_commit']}",
             f"- date: {machine['date']}"]
    if machine.get("cuda_device"):
        lines.insert(1, f"- GPU: {machine['cuda_device']}")
    return lines


def _image(plots: Dict[str, str], key: str, alt: str) -> str:
    return f"![{alt}]({plots[key]})\n" if key in plots else ""


def _microbench_section(microbench: dict, plots: Dict[str, str]) -> List[str]:
    policy = microbench["compile_policy"]
    compiled_note = {
        "none": "torch.compile was not run (--compile none).",
        "headline": "torch.compile of the eager pair ran for the NCHW forward+backward headline "
                    "rows only (its compile time, in the 'compile s' column, is too long for the "
                    "quick budget on every row); the full mode compiles every float32 ReLU row.",
        "relu-fp32": "torch.compile of the eager pair ran for every float32 ReLU row (compile "
                     "time in its own column, not in the timings).",
        "all": "torch.compile of the eager pair ran for every row.",
    }[policy]
    lines = ["## Microbenchmarks", "",
             f"Fused `BatchNormAct` vs eager `nn.BatchNorm*d` + activation vs `torch.compile` of "
             f"the eager pair, timed round-robin in one process on {microbench['device']} with "
             f"{microbench['threads']} threads: median over repeats (warm-up excluded; "
             "IQR in brackets), speed-up = eager median / contender median. " + compiled_note, "",
             "Bytes moved: the fused algorithm's compulsory traffic, the same count for every "
             "contender: forward eval reads x and writes y (2 tensors); forward train reads x "
             "twice (statistics, then normalise) and writes y (3); forward+backward adds dy and x "
             "read twice and dx written (8 in all); a residual adds its read per pass and its "
             "gradient. GB/s = bytes / median; % copy BW compares that with the measured copy "
             "bandwidth below. Tensors small enough to stay in cache can exceed 100%.", "",
             tables.copy_bandwidth_line(microbench), ""]
    if any(not row["case"]["headline"] for row in microbench["rows"]):
        lines.append(tables.microbench_table(microbench))
    else:
        lines.append("This run measured the headline rows only (the table above); `--full` runs "
                     "ResNet-50's shapes, activations, residual, bfloat16 and evaluation mode.")
    image = _image(plots, "speedup", "speed-up over eager")
    if image:
        lines += ["", image]
    return lines


def _train_section(train: dict, plots: Dict[str, str]) -> List[str]:
    config = train["config"]
    lines = ["## Training benchmark", "",
             f"ResNet-style CNN (widths {config['widths']}, {config['blocks']} block(s) per "
             "stage, residual add fused into the second BatchNormAct of each block), SGD lr 0.01 "
             f"momentum 0.9, batch {config['batch_size']}, on {train['device']}"
             f"{' channels_last' if train.get('channels_last') else ''}. Both models start from "
             "the same state_dict and see the same batches; they step in turn, so machine noise "
             "hits both alike. Images/s excludes the first 2 steps. Memory per step: the bytes "
             "autograd saves for backward (each storage once); on CUDA also the allocator's peak. "
             "Synthetic rows use half the batch.", ""]
    if train.get("data"):
        data = train["data"]
        lines += [f"Fashion-MNIST: {data['train_images']} training images, {data['test_images']}"
                  f" test images, normalised with the training set's mean {data['mean']:.4f} "
                  f"and std {data['std']:.4f}.", ""]
    lines += [tables.train_table(train), "",
              "Loss curves: float32 runs that differ only in rounding drift apart as training "
              "amplifies them, so the check is against a float64 copy of the torch model on the "
              "first steps: the fused curve must stay as close to it as the torch float32 curve "
              "does (within 2x, or 1e-5).", ""]
    lines.append(_image(plots, "train_curves", "training loss, fused vs torch"))
    return lines


def _study_section(study: dict, plots: Dict[str, str]) -> List[str]:
    data, config = study["data"], study["config"]
    clip = study["runs"][0]["clip_grad_norm"] if study["runs"] else None
    clip_note = (f"max norm {clip}." if clip else
                 "none (`python -m benchmarks.study --clip-grad-norm 1.0` adds it).")
    lines = ["## Training study: BatchNorm and initialisation", "",
             f"Fashion-MNIST, inputs normalised with the training set's own mean "
             f"**{data['mean']:.4f}** and std **{data['std']:.4f}** (computed over all 60,000 "
             f"training images). {data['train_images']} training images, {config['epochs']} "
             f"epoch(s), Adam lr {study['lr']}, batch {study['batch_size']}; test accuracy on "
             f"{data['eval_images']} test images every {config['eval_every']} steps (BatchNorm in "
             f"eval mode, running statistics). MLP: {study['mlp']['depth']} hidden layers of "
             f"width {study['mlp']['width']}; CNN: plain (no skips), widths "
             f"{study['cnn']['widths']}, {study['cnn']['blocks']} blocks of 2 convs per stage. "
             "Init: normal = N(0,1) weights; default = PyTorch's; xavier = Glorot normal; "
             "kaiming = He normal (fan_in). BatchNorm = pyfusedbn's fused BatchNormAct.", "",
             "Steps to target are counted at the evaluation points (a multiple of "
             f"{config['eval_every']}). Gradient ratio: the second weight layer's gradient norm "
             "over the last hidden layer's on the first batch; far below 1 is a vanishing "
             "gradient. Gradient clipping: "
             + clip_note, "",
             tables.study_tables(study), ""]
    for model in ("mlp", "cnn"):
        lines.append(_image(plots, f"study_{model}", f"{model} test accuracy"))
        lines.append(_image(plots, f"grad_{model}", f"{model} gradient norms per layer"))
    if study.get("axes"):
        lines += ["", "### Batch size and learning rate", "", axes_paragraph(study["axes"]), "",
                  _image(plots, "study_batch_axis", "test accuracy vs batch size, one line per norm")]
    return lines


def write_report(out_dir: str, plots: bool = True, run_info: Optional[dict] = None) -> str:
    """REPORT.md from whichever of microbench.json, train.json, study.json, model_zoo.json exist
    in out_dir."""
    microbench = load_json(out_dir, "microbench.json")
    train = load_json(out_dir, "train.json")
    study = load_json(out_dir, "study.json")
    run_info = run_info or load_json(out_dir, "run.json") or {}
    made, plot_note = {}, None
    if plots:
        try:  # matplotlib is imported when the first figure is drawn
            made = all_plots(out_dir, microbench, train, study)
        except ImportError as e:
            plot_note = f"Plots skipped: {e} (`make bench-deps` installs matplotlib)."
    first = next((r for r in (microbench, train, study) if r), None)
    lines = ["# pyfusedbn benchmark report", ""]
    command = run_info.get("command") or (first or {}).get("command")
    if command:
        lines += [f"- command: `{command}`" + (f" (mode: {run_info['mode']}, wall "
                                                f"{run_info['wall_s']:.0f} s)"
                                                if "wall_s" in run_info else "")]
    if first:
        lines += _machine_lines(first["machine"])
    lines.append("")
    for stage, reason in (run_info.get("skipped") or {}).items():
        lines += [f"> **{stage} skipped**: {reason}", ""]
    if plot_note:
        lines += [f"> {plot_note}", ""]
    if microbench:
        lines += ["## Headline", "",
                  "Fused vs eager `nn.BatchNorm2d` + `nn.ReLU` (and `nn.BatchNorm1d` for the 1d "
                  "row), float32, training mode, one run, median of repeats; fwd_train is the "
                  "forward alone, fwd_bwd forward+backward.", "",
                  tables.microbench_table(microbench, headline_only=True), ""]
        lines += _microbench_section(microbench, made) + [""]
    if train:
        lines += _train_section(train, made) + [""]
    if study:
        lines += _study_section(study, made) + [""]
    zoo = load_json(out_dir, model_zoo_section.JSON_NAME)
    if zoo:
        lines += model_zoo_section.section(zoo) + [""]
    lines += ["## Reproduce", "",
              "`make bench` (quick) or `make bench-full`; each part alone: `python -m "
              "benchmarks.microbench|train|study --quick|--full`, then `python -m "
              "benchmarks.report`. Between commits: `pytest tests/test_microbench.py "
              "--benchmark-autosave`, then `--benchmark-compare`.", ""]
    path = os.path.join(out_dir, REPORT_NAME)
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--no-plots", dest="plots", action="store_false")
    args = parser.parse_args(argv)
    print(write_report(args.out, args.plots))


if __name__ == "__main__":
    main()
