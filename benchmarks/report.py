"""results/REPORT.md: the tables, the plots, the command and the machine, from the JSON files the
entry points wrote.

    python -m benchmarks.report [--out benchmarks/results] [--no-plots]
"""
import argparse
import os
from typing import Dict, List, Optional

from . import host_overhead, model_zoo as model_zoo_section, tables
from .common.results import load_json
from .plots import all_plots
from .study_axes_report import axes_paragraph, axes_tables, headline_text
from .study_report import PUBLISHED_COMMAND, PUBLISHED_DIR, grid_paragraph, grid_tables, load_published

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


def _cpu_sections(dtypes: Optional[dict], host: Optional[dict]) -> List[str]:
    lines = []
    if dtypes:
        lines += ["## CPU: float32, bfloat16 and float16", "",
                  f"Fused `BatchNormAct2d` vs eager `nn.BatchNorm2d` + `nn.ReLU`, training "
                  f"forward+backward, batch {dtypes['batch']}, ResNet-50 BatchNorm shapes, "
                  f"{dtypes['threads']} threads, median of {dtypes['repeats']} repeats (both "
                  "timed round-robin in one process: `python -m benchmarks.cpu_dtypes`). % copy "
                  "BW: the fused step's compulsory bytes (8 tensors, as in the microbenchmarks) "
                  "per second against a `Tensor.copy_` of the same dtype.", "",
                  tables.cpu_dtypes_table(dtypes), ""]
    if host:
        lines += ["## Host overhead", "",
                  f"Ops dispatched (torch profiler) and host time per call at {host['threads']} "
                  f"thread(s), median of {host.get('repeats', 15)} repeats: wall time, the ratio of the "
                  "fastest repeats, and the calling thread's CPU time (which leaves out the time "
                  "other processes took the core). Layer: one training forward+backward; model: a "
                  "whole SGD step (`python -m benchmarks.host_overhead`).", "",
                  tables.host_overhead_table(host), ""]
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


def _study_intro(study: dict) -> List[str]:
    data, config = study.get("data"), study.get("config")
    clip = study["runs"][0]["clip_grad_norm"] if study["runs"] else None
    clip_note = (f"max norm {clip}." if clip else
                 "none (`python -m benchmarks.study --clip-grad-norm 1.0` adds it).")
    normalised = (f"inputs normalised with the training set's own mean **{data['mean']:.4f}** and "
                  f"std **{data['std']:.4f}** (computed over all 60,000 training images)"
                  if data else "inputs normalised with the training set's own mean and std")
    lines = [f"Fashion-MNIST, {normalised}. Every cell runs on several seeds; a table shows mean ± standard "
             f"deviation over them, and a difference of two cells counts only where it exceeds the "
             f"sum of their spreads (otherwise it says \"within spread\"). The sentences under the "
             f"tables are computed from the same numbers.", ""]
    axes = study.get("axes")
    if axes:
        arch = axes["arch"]
        lines += ["### Batch size and learning rate", "",
                  f"Deep MLP ({arch['depth']} hidden layers of width {arch['width']}), He init, "
                  f"ReLU, SGD momentum {axes['momentum']}, one pass over "
                  f"{axes['config']['train_images']} training images per cell; test accuracy on "
                  f"{axes['config']['eval_images']} test images. GroupNorm: 8 groups; LayerNorm: "
                  f"GroupNorm with one group. BatchNorm = pyfusedbn's fused BatchNormAct.", "",
                  axes_tables(axes), "", axes_paragraph(axes), ""]
    if study["runs"]:
        lines += ["### Initialisation x activation x BatchNorm", "",
                  f"{data['train_images']} training images, {config['epochs']} epoch(s), Adam lr "
                  f"{study['lr']}, batch {study['batch_size']}; test accuracy on "
                  f"{data['eval_images']} test images every {config['eval_every']} steps (BatchNorm "
                  f"in eval mode, running statistics). MLP: {study['mlp']['depth']} hidden layers of "
                  f"width {study['mlp']['width']}. Init: normal = N(0,1) weights; default = "
                  "PyTorch's; xavier = Glorot normal; kaiming = He normal (fan_in). Steps to target "
                  f"are counted at the evaluation points (a multiple of {config['eval_every']}). "
                  "Gradient ratio: the second weight layer's gradient norm over the last hidden "
                  "layer's on the first batch; far below 1 is a vanishing gradient. Gradient "
                  "clipping: " + clip_note
                  + (f" Note: {study['target_note']}." if study.get("target_note") else ""),
                  "", grid_tables(study), "", grid_paragraph(study), ""]
    return lines


def _published_lines(published: Optional[dict]) -> List[str]:
    """The committed full run's headline, or where it would be."""
    if not published or not published.get("axes"):
        return [f"No committed full run found in benchmarks/published/study/; "
                f"`{PUBLISHED_COMMAND}` makes one."]
    run = published.get("run") or {}
    machine = published["machine"]
    wall = f", wall {run['wall_s'] / 60:.0f} min" if run.get("wall_s") else ""
    if "&&" in (run.get("command") or ""):
        wall += " (run as two commands, axes then grid: its REPORT.md lists them)"
    partial = (" The grid did not finish in that run: its axes only."
               if published.get("partial") else "")
    return [f"Full (\"paper\") run, committed in `benchmarks/published/study/` (REPORT.md, "
            f"study.json, plots): `{PUBLISHED_COMMAND}` on {machine['cpu']} "
            f"({machine['torch_threads']} torch thread(s)), torch {machine['torch']}, "
            f"{machine['date']}{wall}.{partial}",
            "", "Headline (full run): " + headline_text(published["axes"])]


def _study_section(study: dict, plots: Dict[str, str], published: Optional[dict]) -> List[str]:
    lines = ["## Training study: BatchNorm, GroupNorm, learning rate and initialisation", ""]
    lines += _study_intro(study)
    lines.append(_image(plots, "study_batch_axis", "test accuracy vs batch size, one line per norm"))
    for model in ("mlp", "cnn"):
        lines.append(_image(plots, f"study_{model}", f"{model} test accuracy"))
        lines.append(_image(plots, f"grad_{model}", f"{model} gradient norms per layer"))
    lines += ["### Closing note: the headline numbers", ""]
    if study.get("axes"):
        lines += ["This run: " + headline_text(study["axes"]), ""]
    if published is not study:
        lines += _published_lines(published)
    return lines


def write_report(out_dir: str, plots: bool = True, run_info: Optional[dict] = None,
                 published_dir: Optional[str] = None) -> str:
    """REPORT.md from whichever of microbench.json, cpu_dtypes.json, host_overhead.json,
    train.json, study.json, model_zoo.json exist in out_dir; the study's section also quotes the committed full run (published_dir, default
    benchmarks/published/study/) unless out_dir is that run."""
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
    lines += _cpu_sections(load_json(out_dir, "cpu_dtypes.json"),
                           load_json(out_dir, host_overhead.JSON_NAME))
    if train:
        lines += _train_section(train, made) + [""]
    if study:
        same = os.path.abspath(out_dir) == os.path.abspath(published_dir or PUBLISHED_DIR)
        published = study if same else load_published(published_dir)
        lines += _study_section(study, made, published) + [""]
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
