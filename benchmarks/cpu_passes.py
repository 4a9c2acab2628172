"""CPU time per pass of the fused BatchNorm2d+ReLU training step: statistics, apply, backward
reduce, backward elementwise, each against a copy of the input (the bandwidth ceiling: a pass
that reads k tensors and writes m costs about (k + m) / 2 copies), and the whole training step
fused and eager (BatchNorm2d + ReLU), per dtype and layout.

    python -m benchmarks.cpu_passes [--threads 1] [--batch 8] [--shapes 128x28x28 2048x7x7] [--dtypes ...]

All are timed round-robin in one process, median of the repeats; the parentheses hold the time over
the copy's. At one thread every kernel runs on the calling thread, so --clock thread (the default
there) counts the CPU time that thread spent: on a shared, oversubscribed machine that is far
steadier than wall time, which also counts the time other processes held the core.
"""
import argparse
import statistics
import time
from typing import Dict, List

import torch

import pyfusedbn  # noqa: F401  (loads the ops)

from .common.results import save_json
from .common.timing import time_contenders
from .microbench import EagerBatchNormAct

DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_SHAPES = ("64x112x112", "128x28x28", "512x14x14", "2048x7x7")
ops = torch.ops.pyfusedbn


def passes(x: torch.Tensor):
    """The four kernels of one training step, as callables on fixed inputs."""
    channels = x.shape[1]
    weight = torch.randn(channels, dtype=x.dtype)
    bias = torch.randn(channels, dtype=x.dtype)
    grad = torch.randn_like(x)
    mean, var = ops.batch_norm_stats(x)
    invstd = (var + 1e-5).rsqrt()
    sum_g, sum_g_xhat = ops.batch_norm_act_backward_reduce(grad, x, mean, invstd, weight, bias, None, "relu", 0.0)
    count = x.numel() // channels
    mean_g, mean_g_xhat = sum_g / count, sum_g_xhat / count
    return {
        "copy": lambda: x.clone(),
        "stats": lambda: ops.batch_norm_stats(x),
        "apply": lambda: ops.batch_norm_act_apply(x, mean, invstd, weight, bias, None, "relu", 0.0),
        "bwd_reduce": lambda: ops.batch_norm_act_backward_reduce(grad, x, mean, invstd, weight, bias, None,
                                                                 "relu", 0.0),
        "bwd_elemt": lambda: ops.batch_norm_act_backward_elemt(grad, x, mean, invstd, weight, bias, None, mean_g,
                                                               mean_g_xhat, "relu", 0.0),
    }


def steps(x: torch.Tensor):
    """A training forward+backward of the fused layer and of eager BatchNorm2d + ReLU."""
    x = x.detach().requires_grad_()
    grad = torch.randn_like(x)
    fused = pyfusedbn.BatchNormAct2d(x.shape[1], activation="relu").to(x.dtype)
    eager = EagerBatchNormAct(4, x.shape[1], "relu").to(x.dtype)

    def step(module):
        x.grad = None
        module(x).backward(grad)

    return {"fused": lambda: step(fused), "eager": lambda: step(eager)}


def thread_time_contenders(contenders: Dict, repeats: int, min_repeat_s: float = 0.005) -> Dict[str, float]:
    """Median CPU seconds of the calling thread per call, round-robin over the repeats."""
    inner = {}
    for name, fn in contenders.items():
        fn()
        start = time.thread_time()
        fn()
        inner[name] = max(1, int(min_repeat_s / max(time.thread_time() - start, 1e-6)))
    samples = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.thread_time()
            for _ in range(inner[name]):
                fn()
            samples[name].append((time.thread_time() - start) / inner[name])
    return {name: statistics.median(values) for name, values in samples.items()}


def run(threads: int, batch: int, repeats: int, dtypes: List[str], shapes: List[str], clock: str) -> List[dict]:
    torch.set_num_threads(threads)
    if clock == "thread" and threads != 1:
        raise ValueError(f"--clock thread needs --threads 1 (the kernels' other threads are not counted), got {threads}")
    rows = []
    names = ("stats", "apply", "bwd_reduce", "bwd_elemt", "fused", "eager")
    print(f"threads {threads}, batch {batch}, {clock} clock, median of {repeats}: ms (copies of the input); "
          "speed-up = eager / fused")
    print("| shape | layout | dtype | copy ms | " + " | ".join(names) + " | speed-up |")
    print("| --- | --- | --- | ---: |" + " ---: |" * (len(names) + 1))
    for label in shapes:
        channels, height, width = (int(v) for v in label.split("x"))
        for channels_last in (False, True):
            for dtype in dtypes:
                x = torch.randn(batch, channels, height, width, dtype=getattr(torch, dtype))
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                contenders = {**passes(x), **steps(x)}
                if clock == "thread":
                    ms = {name: s * 1e3 for name, s in thread_time_contenders(contenders, repeats).items()}
                else:
                    timings = time_contenders(contenders, torch.device("cpu"), warmup=2, repeats=repeats)
                    ms = {name: t.median * 1e3 for name, t in timings.items()}
                row = dict(shape=label, layout="channels_last" if channels_last else "nchw", dtype=dtype, ms=ms,
                           speedup=ms["eager"] / ms["fused"])
                rows.append(row)
                cells = " | ".join(f"{ms[n]:.3f} ({ms[n] / ms['copy']:.1f})" for n in names)
                print(f"| {label} | {row['layout']} | {dtype} | {ms['copy']:.3f} | {cells} | {row['speedup']:.2f}x |",
                      flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--shapes", nargs="+", default=list(DEFAULT_SHAPES))
    parser.add_argument("--clock", choices=("thread", "wall"), default=None,
                        help="thread CPU time (the default at one thread) or wall time")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    clock = args.clock or ("thread" if args.threads == 1 else "wall")
    rows = run(args.threads, args.batch, args.repeats, args.dtypes, args.shapes, clock)
    payload = {"threads": args.threads, "batch": args.batch, "clock": clock, "rows": rows}
    print(f"wrote {save_json(args.out, 'cpu_passes.json', payload)}")


if __name__ == "__main__":
    main()
