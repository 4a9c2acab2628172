"""Model-zoo benchmark: pyfusedbn.convert on torchvision, timm and diffusers models (zoo.ZOO:
BatchNorm classifiers; zoo.NORM_ZOO: GroupNorm / LayerNorm models; zoo.DIFFUSERS_ZOO: UNets and
a VAE from small configs, image in and out).

For each model (random init): norm layers fused / total and why each one left was left, exactness
(a float64 training step and a float32 eval forward against the original), the CPU training-step
speed-up, and with --device cuda the bf16 channels_last training images/s and peak memory of the
original and the converted model, eager and under torch.compile.

    python -m benchmarks.model_zoo [--models resnet18,timm/efficientnet_b0] [--device cuda]

A model whose library does not import is skipped with one line. Writes model_zoo.json (or
--json-name).
"""
import argparse
import copy
import statistics
import time

import torch

import pyfusedbn
from pyfusedbn.testing import zoo

from .common.markdown import MiB
from .common.results import save_json

JSON_NAME = "model_zoo.json"


def _seeded_build(libraries, library, name, seed=0):
    torch.manual_seed(seed)
    return zoo.build(libraries, library, name)


def _input(batch, size, channels=3, dtype=torch.float32, device="cpu", seed=2):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, size, size, generator=generator, dtype=dtype).to(device)


def conversion_summary(original, converted):
    """Norm layers (every family) fused / all of them, and the report's reasons for the rest."""
    report = converted.pyfusedbn_report
    fused, total = zoo.count_norms(converted)
    return {"fused": fused, "total": total,
            "left": [list(item) for item in report.skipped], "method": report.method}


def exactness(original, converted, batch, size):
    """Worst relative difference (and where) of a float64 training step and a float32 eval
    forward, converted vs original."""
    x = _input(batch, size, zoo.in_channels(original))
    with torch.no_grad():
        eval_diff = zoo.largest_difference(
            {"output": copy.deepcopy(converted).eval()(x)},
            {"output": copy.deepcopy(original).eval()(x)})
    a = zoo.train_step(copy.deepcopy(converted).double().train(), x.double())
    e = zoo.train_step(copy.deepcopy(original).double().train(), x.double())
    return {"train_float64": zoo.largest_difference(a, e), "eval_float32": eval_diff}


def _step_seconds(model, x):
    start = time.perf_counter()
    model(x).float().sum().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def cpu_step_speedup(original, converted, batch, size, repeats):
    """Median time of a float32 training step (forward + backward) of each, timed alternately
    in this process after one warm-up each; speed-up = original / converted."""
    x = _input(batch, size, zoo.in_channels(original))
    models = {"original": original.train(), "converted": converted.train()}
    times = {k: [] for k in models}
    for i in range(repeats + 1):
        for key, model in models.items():
            seconds = _step_seconds(model, x)
            if i:
                times[key].append(seconds)
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {"original_s": medians["original"], "converted_s": medians["converted"],
            "speedup": medians["original"] / medians["converted"]}


def _gpu_train(model, batch, size, steps, compile_model):
    """bf16 autocast, channels_last SGD training: (images/s, peak MiB)."""
    model = model.cuda().to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    step_model = torch.compile(model) if compile_model else model
    x = _input(batch, size, zoo.in_channels(model), device="cuda").contiguous(
        memory_format=torch.channels_last)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_model(x).float().logsumexp(1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up (and compilation)
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return batch * steps / seconds, torch.cuda.max_memory_allocated() / MiB


def gpu_comparison(original, converted, batch, size, steps, compile_too):
    import torch._dynamo  # reset between models: each compiles afresh

    result = {}
    for mode in ("eager", "compile") if compile_too else ("eager",):
        for key, model in (("original", original), ("converted", converted)):
            torch._dynamo.reset()
            images, peak = _gpu_train(copy.deepcopy(model), batch, size, steps, mode == "compile")
            result[f"{mode}_{key}"] = {"images_per_s": images, "peak_mib": peak}
    return result


def run_model(libraries, library, name, args):
    original = _seeded_build(libraries, library, name)
    converted = pyfusedbn.convert(original)
    row = {"library": library, "model": name, **conversion_summary(original, converted)}
    row["exactness"] = exactness(original, converted, args.batch, args.size)
    row["cpu"] = cpu_step_speedup(original, converted, args.batch, args.size, args.repeats)
    if args.device == "cuda":
        row["gpu"] = gpu_comparison(original, converted, args.gpu_batch, args.gpu_size,
                                    args.gpu_steps, not args.no_compile)
    return row


def format_table(rows):
    header = ("| model | norm layers fused | float64 train step, worst diff | float32 eval diff "
              "| CPU step speed-up |")
    lines = [header, "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        train_name, train_diff = r["exactness"]["train_float64"]
        lines.append(f"| {r['library']} {r['model']} | {r['fused']}/{r['total']} "
                     f"| {train_diff:.1e} ({train_name}) "
                     f"| {r['exactness']['eval_float32'][1]:.1e} | {r['cpu']['speedup']:.2f}x |")
    if any("gpu" in r for r in rows):
        lines += ["", "| model | mode | images/s original | converted | peak MiB original "
                  "| converted |", "| --- | --- | ---: | ---: | ---: | ---: |"]
        for r in (r for r in rows if "gpu" in r):
            for mode in ("eager", "compile"):
                if f"{mode}_original" in r["gpu"]:
                    o, c = r["gpu"][f"{mode}_original"], r["gpu"][f"{mode}_converted"]
                    lines.append(f"| {r['library']} {r['model']} | {mode} "
                                 f"| {o['images_per_s']:.0f} | {c['images_per_s']:.0f} "
                                 f"| {o['peak_mib']:.0f} | {c['peak_mib']:.0f} |")
    left = [(r, name, why) for r in rows for name, why in r["left"]]
    if left:
        lines += ["", "Norm layers left unfused, and why:", ""]
        lines += [f"- {r['library']} {r['model']} `{name}`: {why}" for r, name, why in left]
    return "\n".join(lines)


def section(zoo):
    """The REPORT.md section from model_zoo.json."""
    settings = zoo["settings"]
    return ["## Model zoo", "",
            f"`{zoo['command']}`: `pyfusedbn.convert` on torchvision, timm and diffusers models "
            "(random init; diffusers' from small configs). Exactness: worst |difference| / "
            "max(1, max |reference|) over the "
            "output, input and parameter gradients and running statistics of a float64 "
            f"training step, and the float32 eval output (batch {settings['batch']}, "
            f"{settings['size']}x{settings['size']}). CPU step speed-up: median float32 training "
            f"step (forward + backward) of the original / the converted, {settings['repeats']} "
            "repeats alternated in one process.", "", format_table(zoo["rows"])]


def _selected(spec, libraries):
    wanted = None if spec == "all" else set(spec.split(","))
    chosen = []
    for library, name in zoo.ZOO + zoo.NORM_ZOO + zoo.DIFFUSERS_ZOO:
        if wanted is not None and name not in wanted and f"{library}/{name}" not in wanted:
            continue
        if isinstance(libraries[library], str):
            print(f"model_zoo: skipped {library} {name}: {libraries[library]}")
            continue
        chosen.append((library, name))
    return chosen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="all",
                        help="comma-separated names (library/name where both have one)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gpu-batch", type=int, default=128)
    parser.add_argument("--gpu-size", type=int, default=224)
    parser.add_argument("--gpu-steps", type=int, default=20)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--json-name", default=JSON_NAME)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    libraries = zoo.import_libraries()
    if all(isinstance(v, str) for v in libraries.values()):
        print(f"model_zoo: skipped: {'; '.join(libraries.values())}")
        return None
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False")
    rows = []
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "json_name")}
    for library, name in _selected(args.models, libraries):
        row = run_model(libraries, library, name, args)
        rows.append(row)
        print(f"model_zoo: {library} {name}: {row['fused']}/{row['total']} fused, float64 train "
              f"step {row['exactness']['train_float64'][1]:.1e}, float32 eval "
              f"{row['exactness']['eval_float32'][1]:.1e}, CPU step {row['cpu']['speedup']:.2f}x",
              flush=True)
        # Written after each model, so that an interrupted run keeps what it measured.
        path = save_json(args.out, args.json_name, {"settings": settings, "rows": rows})
    print(format_table(rows))
    print(f"model_zoo: wrote {path}" if rows else "model_zoo: no model selected")
    return rows


if __name__ == "__main__":
    main()
