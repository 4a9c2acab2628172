"""CPU speed per dtype: fused BatchNormAct2d(relu) vs eager nn.BatchNorm2d + nn.ReLU, training
forward+backward, on every ResNet-50 BatchNorm shape, NCHW and channels_last, float32, bfloat16
and float16 (issue 11: the 16-bit kernels should gain at least what float32 gains).

    python -m benchmarks.cpu_dtypes [--threads 2] [--batch 8] [--repeats 15] [--dtypes ...]
        [--keep-freed-memory] [--out DIR]

Both contenders are timed round-robin in one process (benchmarks/common/timing.py), same input
every step, median of the repeats; the table and benchmarks/results/cpu_dtypes.json hold the same numbers.
"faults" are each contender's minor page faults per step (benchmarks/common/allocator.py).
"""
import argparse
import math
from typing import Dict, List

import torch

import pyfusedbn

from .cases import BATCH, resnet50_bn_shapes
from .microbench import EagerBatchNormAct
from .common.allocator import add_allocator_arg, configure_allocator
from .common.results import save_json
from .common.timing import time_contenders

DTYPES = ("float32", "bfloat16", "float16")


def measure(shape, dtype: torch.dtype, channels_last: bool, repeats: int) -> Dict[str, float]:
    """Median ms per training forward+backward of each contender, and the speed-up."""
    x = torch.randn(shape, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    grad = torch.randn_like(x)
    eager = EagerBatchNormAct(4, shape[1], "relu").to(dtype)
    fused = pyfusedbn.BatchNormAct2d(shape[1], activation="relu").to(dtype)

    def step(module):
        x.grad = None
        module(x).backward(grad)

    timings = time_contenders({"eager": lambda: step(eager), "fused": lambda: step(fused)},
                              torch.device("cpu"), warmup=3, repeats=repeats)
    eager_ms, fused_ms = timings["eager"].median * 1e3, timings["fused"].median * 1e3
    return {"eager_ms": eager_ms, "fused_ms": fused_ms, "speedup": eager_ms / fused_ms,
            "eager_faults": timings["eager"].summary()["faults_per_call"],
            "fused_faults": timings["fused"].summary()["faults_per_call"]}


def run(threads: int, batch: int, repeats: int, dtypes: List[str], shapes=None) -> List[dict]:
    """shapes: (C, H, W, label) tuples, ResNet-50's by default."""
    torch.set_num_threads(threads)
    rows = []
    print(f"threads {threads}, batch {batch}, BatchNorm2d+ReLU training fwd+bwd, median of {repeats} (ms)")
    print("| shape | layout | dtype | eager ms | fused ms | speed-up | faults eager / fused |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for channels, height, width, label in shapes or resnet50_bn_shapes():
        shape = (batch, channels, height, width)
        for channels_last in (False, True):
            for dtype in dtypes:
                row = measure(shape, getattr(torch, dtype), channels_last, repeats)
                row.update(shape=list(shape), label=label, dtype=dtype,
                           layout="channels_last" if channels_last else "nchw")
                rows.append(row)
                print(f"| {channels}x{height}x{width} | {row['layout']} | {dtype} | {row['eager_ms']:.3f} "
                      f"| {row['fused_ms']:.3f} | {row['speedup']:.2f}x | {row['eager_faults']:.0f} / {row['fused_faults']:.0f} |",
                      flush=True)
    for dtype in dtypes:
        ups = [r["speedup"] for r in rows if r["dtype"] == dtype]
        print(f"{dtype}: min {min(ups):.2f}x, geometric mean {math.exp(sum(map(math.log, ups)) / len(ups)):.2f}x")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=BATCH["cpu"])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--out", default="benchmarks/results")
    add_allocator_arg(parser)
    args = parser.parse_args(argv)
    allocator = configure_allocator(args)
    rows = run(args.threads, args.batch, args.repeats, args.dtypes)
    path = save_json(args.out, "cpu_dtypes.json", {"threads": args.threads, "batch": args.batch,
                                                   "repeats": args.repeats, "allocator": allocator, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
