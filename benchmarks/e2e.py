"""End-to-end training step: a whole network eager vs `pyfusedbn.convert`, each also under
`torch.compile`, and the memory-saving mode on a conv -> BatchNorm -> LeakyReLU stack.

    python -m benchmarks.e2e [--device cuda|cpu] [--quick] [--budget-s 240] [--no-compile]
                             [--batch 128] [--size 224] [--out benchmarks/results]

ResNet-50 (torchvision's when importable, else benchmarks.resnet's copy of it), SGD with momentum,
bfloat16 autocast, channels_last, cross-entropy on random labels. Rows:
  resnet50   eager | converted | eager+compile | converted+compile     (ratio vs eager)
  stack      torch | fused | memory_efficient                          (ratio vs torch)
The stack is issue 11's: 12 x (3x3 conv -> BatchNorm -> LeakyReLU), 64 channels, 56x56, batch 64,
float32 channels_last. Each row: step ms (median over the timed steps after warm-up; CUDA events
on the GPU, perf_counter on the CPU), images/s, and on CUDA the peak of max_memory_allocated over
the timed steps (model, gradients and optimizer state included, each row built fresh), and the
MiB autograd saved for backward in one step (each storage once; uncompiled rows). --quick
shrinks the sizes (the CPU smoke test); --budget-s bounds the wall time: rows that would start
after it are reported as skipped. A table on stdout, JSON in <out>/e2e.json.
"""
import argparse
import contextlib
import gc
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

import pyfusedbn
from pyfusedbn.activations import resolve_activation
from pyfusedbn.memory_efficient import check_memory_efficient
from pyfusedbn.testing import SavedTensors

from .common.markdown import MiB
from .common.results import save_json
from .resnet import resnet50

# (batch, image size) of the ResNet-50 rows, and the stack's (batch, channels, size, layers).
FULL = {"resnet": (128, 224), "stack": (64, 64, 56, 12), "warmup": 5, "steps": 20}
QUICK_CPU = {"resnet": (4, 32), "stack": (4, 8, 8, 3), "warmup": 1, "steps": 3}
QUICK_CUDA = {"resnet": (64, 224), "stack": (64, 64, 56, 12), "warmup": 3, "steps": 10}


class ConvStack(nn.Module):
    """`layers` x (3x3 conv -> nn.BatchNorm2d -> nn.LeakyReLU), average pool, linear head."""

    def __init__(self, channels: int, layers: int, classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(*[m for _ in range(layers) for m in (
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
            nn.LeakyReLU())])
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.body(x), 1), 1))


def memory_efficient(model: nn.Module) -> int:
    """Switches every fused layer whose activation the backward can invert to
    memory_efficient=True (in place); returns how many were switched."""
    switched = 0
    for module in model.modules():
        if not isinstance(module, pyfusedbn.BatchNormAct2d):
            continue
        try:
            check_memory_efficient(True, False, *resolve_activation(module.activation,
                                                                    module.activation_param))
        except ValueError:  # not invertible (relu, silu, ...): stays in the normal mode
            continue
        module.memory_efficient = True
        switched += 1
    return switched


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast_dtype) -> Callable:
    """One SGD training step (zero_grad, forward under autocast, backward, optimizer step)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    autocast = (torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype
                else contextlib.nullcontext())

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    return step


def time_steps(step: Callable, device: torch.device, warmup: int, steps: int,
               max_s: float) -> Dict[str, float]:
    """Median step seconds over the timed steps (at least 3, fewer than `steps` once max_s has
    passed) and the peak allocated bytes over them (CUDA only)."""
    for _ in range(warmup):
        step()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    samples, start = [], time.perf_counter()
    for index in range(steps):
        if cuda:
            events = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            events[0].record()
            step()
            events[1].record()
            samples.append(events)
        else:
            begin = time.perf_counter()
            step()
            samples.append(time.perf_counter() - begin)
        if index >= 2 and time.perf_counter() - start > max_s:
            break
    if cuda:
        torch.cuda.synchronize(device)
        samples = [a.elapsed_time(b) / 1e3 for a, b in samples]
    return {"step_s": statistics.median(samples), "steps": len(samples),
            "peak_bytes": torch.cuda.max_memory_allocated(device) if cuda else None}


def variants(config: dict, device: torch.device, compile_: bool, batch: Optional[int],
             size: Optional[int]) -> List[dict]:
    """The rows to run: each a name, a baseline name, a model factory and its inputs."""
    rows = []
    resnet_batch, resnet_size = config["resnet"]
    resnet_batch, resnet_size = batch or resnet_batch, size or resnet_size
    width = 64 if resnet_size >= 64 else 8  # --quick on the CPU: a thin copy of the layout

    def resnet(convert):
        model = resnet50(width)[0]
        return pyfusedbn.convert(model) if convert else model

    # One input per model on the device, shared by its rows (their peaks then compare).
    x = torch.randn(resnet_batch, 3, resnet_size, resnet_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (resnet_batch,), device=device)

    def resnet_rows(compiled):
        suffix = "+compile" if compiled else ""
        return [{"model": "resnet50", "variant": ("converted" if convert else "eager") + suffix,
                 "baseline": "eager", "build": lambda c=convert: resnet(c), "compile": compiled,
                 "x": x, "y": y, "autocast": torch.bfloat16} for convert in (False, True)]

    rows += resnet_rows(False)
    stack_batch, channels, stack_size, layers = config["stack"]
    sx = torch.randn(stack_batch, channels, stack_size, stack_size, device=device)
    sx = sx.contiguous(memory_format=torch.channels_last)
    sy = torch.randint(0, 10, (stack_batch,), device=device)

    def stack(mode):
        model = ConvStack(channels, layers)
        if mode != "torch":
            model = pyfusedbn.convert(model)
        if mode == "memory_efficient":
            memory_efficient(model)
        return model

    for mode in ("torch", "fused", "memory_efficient"):
        rows.append({"model": f"stack{layers}", "variant": mode, "baseline": "torch",
                     "build": lambda m=mode: stack(m), "compile": False, "x": sx, "y": sy,
                     "autocast": None})
    if compile_:  # last: with a tight --budget-s they are the rows skipped
        rows += resnet_rows(True)
    return rows


def run(args) -> dict:
    device = torch.device(args.device)
    config = (QUICK_CUDA if device.type == "cuda" else QUICK_CPU) if args.quick else FULL
    warmup = config["warmup"] if args.warmup is None else args.warmup
    steps = config["steps"] if args.steps is None else max(args.steps, 1)
    rows = variants(config, device, not args.no_compile, args.batch, args.size)
    start, results = time.perf_counter(), []
    report = {"device": str(device), "quick": args.quick, "warmup": warmup, "steps": steps,
              "budget_s": args.budget_s, "rows": results}
    for index, row in enumerate(rows):
        result = {k: row[k] for k in ("model", "variant", "baseline")}
        result.update(batch=row["x"].shape[0], shape=list(row["x"].shape[1:]),
                      autocast=str(row["autocast"]) if row["autocast"] else None)
        left = args.budget_s - (time.perf_counter() - start)
        if left <= 0:
            results.append(dict(result, skipped="time budget spent"))
            continue
        torch.manual_seed(0)
        model = row["build"]().to(device, memory_format=torch.channels_last).train()
        if row["compile"]:
            model = torch.compile(model)
        step = make_step(model, row["x"], row["y"], row["autocast"])
        saved = None
        if not row["compile"]:  # saved_tensors_hooks would make the compiled model recompile
            with SavedTensors() as saved_tensors:
                step()
            saved = saved_tensors.nbytes
        # The timed loop may use an even share of what is left (compilation is in warm-up).
        timing = time_steps(step, device, warmup, steps, max(left / (len(rows) - index), 1.0))
        result.update(step_ms=timing["step_s"] * 1e3, steps=timing["steps"],
                      images_per_s=result["batch"] / timing["step_s"],
                      peak_mib=timing["peak_bytes"] / MiB if timing["peak_bytes"] else None,
                      saved_mib=saved / MiB if saved is not None else None)
        results.append(result)
        add_ratios(results)
        print(format_row(result), flush=True)
        # Saved after every row: a run stopped by an outer timeout keeps what it measured.
        save_json(args.out, "e2e.json", report)
        # The step holds the model and its optimizer: free both before the next row's peak.
        del model, step
        if row["compile"]:  # compiled code and its guards keep the model alive
            torch._dynamo.reset()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["wall_s"] = time.perf_counter() - start
    return report


def add_ratios(results: List[dict]) -> None:
    """images/s and peak memory relative to the same model's baseline row."""
    base = {(r["model"], r["variant"]): r for r in results if "step_ms" in r}
    for r in results:
        ref = base.get((r["model"], r["baseline"]))
        if "step_ms" in r and ref:
            r["speedup"] = ref["step_ms"] / r["step_ms"]
            if r["peak_mib"] and ref["peak_mib"]:
                r["peak_ratio"] = r["peak_mib"] / ref["peak_mib"]


def format_row(r: dict) -> str:
    if "skipped" in r:
        return f"| {r['model']} | {r['variant']} | skipped: {r['skipped']} | | | | |"
    peak = f"{r['peak_mib']:.0f}" if r.get("peak_mib") else "—"
    saved = f"{r['saved_mib']:.1f}" if r.get("saved_mib") is not None else "—"
    ratio = f"{r['speedup']:.2f}x" if "speedup" in r else ""
    peak_ratio = f" ({r['peak_ratio']:.2f}x)" if "peak_ratio" in r else ""
    return (f"| {r['model']} | {r['variant']} | {r['step_ms']:.2f} | {r['images_per_s']:.0f} | "
            f"{ratio} | {peak}{peak_ratio} | {saved} |")


def print_table(report: dict) -> None:
    print(f"\n{report['device']}, median of up to {report['steps']} steps after "
          f"{report['warmup']} warm-up; ratio = baseline step time / this step time")
    print("| model | variant | step ms | images/s | vs baseline | peak MiB | saved MiB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in report["rows"]:
        print(format_row(r))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes, few steps")
    parser.add_argument("--budget-s", type=float, default=float("inf"),
                        help="rows that would start after this many seconds are skipped")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled rows")
    parser.add_argument("--batch", type=int, help="ResNet-50 batch (default 128; quick: less)")
    parser.add_argument("--size", type=int, help="ResNet-50 image size (default 224)")
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    print_table(report)
    print(f"wrote {save_json(args.out, 'e2e.json', report)}")
    return report


if __name__ == "__main__":
    main()
