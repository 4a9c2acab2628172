"""Microbenchmark: fused GroupNormAct(32) + SiLU vs eager nn.GroupNorm + nn.SiLU vs torch.compile
of the eager pair, on diffusion-UNet shapes, fp32/bf16, NCHW/NHWC, forward + backward.

    python -m benchmarks.group_norm_bench [--quick|--full] [--device cpu|cuda] [--threads 2]
        [--compile none|headline|all] [--repeats 10] [--keep-freed-memory] [--out benchmarks/results]

Bytes moved are the fused algorithm's compulsory traffic, the same for every contender: forward
reads x twice (statistics, normalise) and writes y; backward reads dy and x twice (reduce, then
elementwise) and writes dx: 8 tensor-sized passes. GB/s is compared with the device's measured
copy bandwidth (benchmarks/common/timing.py). Quick mode uses batch 2 instead of 8 (a few seconds per
case on a small CPU); --full the UNet batch of 8. "faults" is the process's minor page faults per
step: at batch 8 they can be most of a step's time, and vary between runs; --keep-freed-memory
takes most of them out (benchmarks/common/allocator.py).
"""
import argparse
import time

import torch
import torch.nn as nn

import pyfusedbn

from .common.allocator import add_allocator_arg, configure_allocator
from .common.cli import add_common_args, resolve_device
from .common.results import save_json
from .common.timing import copy_bandwidth, time_contenders

UNET_SHAPES = ((8, 320, 64, 64), (8, 640, 32, 32), (8, 1280, 16, 16))
GROUPS = 32
DTYPES = ("float32", "bfloat16")
LAYOUTS = ("nchw", "nhwc")
PASSES = 8  # see the module docstring


class EagerGroupNormSiLU(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.norm = nn.GroupNorm(GROUPS, channels)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.norm(x))


def cases(quick: bool):
    for shape in UNET_SHAPES:
        if quick:
            shape = (2,) + shape[1:]
        for dtype in DTYPES:
            for layout in LAYOUTS:
                yield shape, dtype, layout


def build_steps(shape, dtype, layout, device, with_compile):
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)
    make = lambda: torch.randn(shape, generator=gen).to(device=device, dtype=getattr(torch, dtype)) \
        .contiguous(memory_format=fmt)
    x, grad = make().requires_grad_(), make()
    channels = shape[1]
    fused = pyfusedbn.GroupNormAct(GROUPS, channels).to(device)
    eager = EagerGroupNormSiLU(channels).to(device)
    modules = {"fused": fused, "eager": eager}
    compile_s = None
    if with_compile:
        torch._dynamo.reset()
        modules["compiled"] = torch.compile(EagerGroupNormSiLU(channels).to(device), dynamic=False)

    def step_of(module):
        def step():
            x.grad = None
            module.zero_grad(set_to_none=True)
            module(x).backward(grad)
        return step

    steps = {name: step_of(m) for name, m in modules.items()}
    if with_compile:
        start = time.perf_counter()
        steps["compiled"]()
        compile_s = time.perf_counter() - start
    # Sanity: a fast wrong kernel must not look good.
    with torch.no_grad():
        max_abs_diff = (fused(x).float() - eager(x).float()).abs().max().item()
    return steps, compile_s, max_abs_diff, x.numel() * x.element_size()


def run(quick, device, compile_policy, repeats, max_case_s=8.0):
    bandwidth = copy_bandwidth(device)
    rows = []
    for index, (shape, dtype, layout) in enumerate(cases(quick)):
        with_compile = compile_policy == "all" or (compile_policy == "headline" and index == 0)
        steps, compile_s, diff, tensor_bytes = build_steps(shape, dtype, layout, device, with_compile)
        timings = time_contenders(steps, device, warmup=2, repeats=repeats, max_total_s=max_case_s)
        nbytes = PASSES * tensor_bytes
        for name, timing in timings.items():
            gbps = nbytes / timing.median / 1e9
            rows.append({"shape": list(shape), "dtype": dtype, "layout": layout, "contender": name,
                         **timing.summary(), "bytes": nbytes, "gbps": gbps,
                         "pct_copy_bw": 100.0 * gbps / bandwidth["gbps"],
                         "speedup_vs_eager": timings["eager"].median / timing.median,
                         "max_abs_diff_fused_vs_eager": diff, "compile_s": compile_s if name == "compiled" else None})
    return {"copy_bandwidth": bandwidth, "device": device.type, "threads": torch.get_num_threads(),
            "groups": GROUPS, "activation": "silu", "mode": "fwd_bwd", "rows": rows}


def table(result) -> str:
    kept = result.get("allocator", {}).get("applied")
    head = (f"GroupNorm({result['groups']}) + SiLU, forward + backward, {result['device']}, "
            f"{result['threads']} threads; copy bandwidth {result['copy_bandwidth']['gbps']:.1f} GB/s"
            + ("; freed memory kept" if kept else ""))
    lines = [head, f"{'shape':<20} {'dtype':<9} {'layout':<6} {'contender':<9} {'median ms':>10} "
                   f"{'GB/s':>7} {'% copy':>7} {'x eager':>8} {'faults':>7}"]
    for r in result["rows"]:
        lines.append(f"{'x'.join(map(str, r['shape'])):<20} {r['dtype']:<9} {r['layout']:<6} "
                     f"{r['contender']:<9} {1e3 * r['median_s']:>10.2f} {r['gbps']:>7.1f} "
                     f"{r['pct_copy_bw']:>7.1f} {r['speedup_vs_eager']:>8.2f} {r.get('faults_per_call') or 0:>7.0f}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, progress=False)
    parser.add_argument("--compile", default="headline", choices=("none", "headline", "all"))
    parser.add_argument("--repeats", type=int, default=10)
    add_allocator_arg(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    allocator = configure_allocator(args)
    result = run(args.quick, resolve_device(args.device), args.compile, args.repeats)
    result["allocator"] = allocator
    save_json(args.out, "group_norm_bench.json", result)
    print(table(result))


if __name__ == "__main__":
    main()
