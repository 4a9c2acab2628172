"""CPU time per pass of the fused BatchNorm2d+ReLU training step: statistics, apply, backward
reduce, backward elementwise, each against a copy of the input (the bandwidth ceiling: a pass
that reads k tensors and writes m costs about (k + m) / 2 copies), per dtype and layout.

    python -m benchmarks.cpu_passes [--threads 1] [--batch 8] [--shapes 128x28x28 2048x7x7] [--dtypes ...]

All passes and the copy are timed round-robin in one process (benchmarks/common/timing.py), median
of the repeats; the `copies` column is the pass's time over the copy's time.
"""
import argparse
from typing import List

import torch

import pyfusedbn  # noqa: F401  (loads the ops)

from .common.results import save_json
from .common.timing import time_contenders

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


def run(threads: int, batch: int, repeats: int, dtypes: List[str], shapes: List[str]) -> List[dict]:
    torch.set_num_threads(threads)
    rows = []
    names = ("stats", "apply", "bwd_reduce", "bwd_elemt")
    print(f"threads {threads}, batch {batch}, median of {repeats}: ms (copies of the input)")
    print("| shape | layout | dtype | copy ms | " + " | ".join(names) + " |")
    print("| --- | --- | --- | ---: |" + " ---: |" * len(names))
    for label in shapes:
        channels, height, width = (int(v) for v in label.split("x"))
        for channels_last in (False, True):
            for dtype in dtypes:
                x = torch.randn(batch, channels, height, width, dtype=getattr(torch, dtype))
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                timings = time_contenders(passes(x), torch.device("cpu"), warmup=2, repeats=repeats)
                ms = {name: t.median * 1e3 for name, t in timings.items()}
                row = dict(shape=label, layout="channels_last" if channels_last else "nchw", dtype=dtype, ms=ms)
                rows.append(row)
                cells = " | ".join(f"{ms[n]:.3f} ({ms[n] / ms['copy']:.1f})" for n in names)
                print(f"| {label} | {row['layout']} | {dtype} | {ms['copy']:.3f} | {cells} |", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--shapes", nargs="+", default=list(DEFAULT_SHAPES))
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    rows = run(args.threads, args.batch, args.repeats, args.dtypes, args.shapes)
    print(f"wrote {save_json(args.out, 'cpu_passes.json', {'threads': args.threads, 'batch': args.batch, 'rows': rows})}")


if __name__ == "__main__":
    main()
