"""Times the GroupNorm + SiLU backward op (and optionally the forward) of two builds of pyfusedbn
against each other: each measurement in its own process, the two builds alternating, glibc told to
keep freed memory (benchmarks/common/allocator.py) so that page faults do not decide the result.

    python tools/ab_group_norm_backward.py --base /path/to/old/checkout --new . \\
        [--shapes 8x320x64x64 8x640x32x32 8x1280x16x16] [--dtypes float32 bfloat16] \\
        [--layouts nchw nhwc] [--pass bwd|fwd] [--rounds 2] [--seconds 3] [--between]

--between runs eager nn.GroupNorm + nn.SiLU forward and backward on other tensors of the same
shape before each timed call, as a model's other layers do: back to back, a call finds the
previous call's data and code warm, which hid costs that show between other work.

Each checkout must have its extension built in place (setup.py build_ext --inplace). Prints the
median ms of each build per case and new / base's speed-up.
"""
import argparse
import os
import statistics
import subprocess
import sys

TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"

CHILD = r"""
import gc, sys, time, torch
import pyfusedbn
gc.disable()
torch.set_num_threads(int(sys.argv[1]))
shape = tuple(int(v) for v in sys.argv[2].split("x"))
dtype, layout, which, seconds = getattr(torch, sys.argv[3]), sys.argv[4], sys.argv[5], float(sys.argv[6])
between = sys.argv[7] == "1"
ops = torch.ops.pyfusedbn
gen = torch.Generator().manual_seed(0)
memory_format = torch.channels_last if layout == "nhwc" else torch.contiguous_format
x = torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=memory_format)
C = shape[1]
w, b = torch.randn(C, generator=gen).to(dtype), torch.randn(C, generator=gen).to(dtype)
dy = torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=memory_format)
out, mean, rstd = ops.group_norm_act(x, w, b, None, 32, 1e-5, "silu", 0.0)
step = (lambda: ops.group_norm_act(x, w, b, None, 32, 1e-5, "silu", 0.0)) if which == "fwd" else \
       (lambda: ops.group_norm_act_backward(dy, x, mean, rstd, w, b, None, 32, "silu", 0.0))
if between:
    eager = torch.nn.Sequential(torch.nn.GroupNorm(32, C), torch.nn.SiLU()).to(dtype)
    x_other = torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=memory_format)
    x_other.requires_grad_()
    other = lambda: eager(x_other).backward(dy)
step()
start, spent, calls = time.perf_counter(), 0.0, 0
while time.perf_counter() - start < seconds:
    if between:
        other()
    t0 = time.perf_counter()
    step()
    spent += time.perf_counter() - t0
    calls += 1
print(spent / calls * 1e3)
"""


def measure(checkout, threads, shape, dtype, layout, which, seconds, between):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout), GLIBC_TUNABLES=TUNABLES)
    out = subprocess.run([sys.executable, "-c", CHILD, str(threads), shape, dtype, layout, which, str(seconds),
                          "1" if between else "0"],
                         env=env, capture_output=True, text=True, cwd="/", check=True)
    return float(out.stdout.split()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--new", required=True)
    parser.add_argument("--shapes", nargs="+", default=["8x320x64x64", "8x640x32x32", "8x1280x16x16"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--layouts", nargs="+", default=["nchw", "nhwc"])
    parser.add_argument("--pass", dest="which", default="bwd", choices=("bwd", "fwd"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--between", action="store_true", help="eager GroupNorm + SiLU work before each call")
    args = parser.parse_args(argv)
    print(f"| shape | dtype | layout | base ms | new ms | speed-up |  ({args.which}, {args.threads} threads"
          f"{', between eager steps' if args.between else ''})")
    for shape in args.shapes:
        for dtype in args.dtypes:
            for layout in args.layouts:
                times = {"base": [], "new": []}
                for _ in range(args.rounds):
                    for name in ("base", "new"):
                        times[name].append(measure(getattr(args, name), args.threads, shape, dtype, layout,
                                                   args.which, args.seconds, args.between))
                base, new = statistics.median(times["base"]), statistics.median(times["new"])
                print(f"| {shape} | {dtype} | {layout} | {base:.3f} | {new:.3f} | {base / new:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
