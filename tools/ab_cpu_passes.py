"""Times the BatchNorm + ReLU CPU passes of two checkouts against each other, without building
either extension: tools/cpu_pass_timer/pass_timer.cpp is compiled against each checkout's csrc/
(the installed torch's headers, this machine's vector flags from setup.py), then the two binaries
run alternately, `--rounds` times each, and the minimum per pass is kept.

    python tools/ab_cpu_passes.py --base /path/to/old/checkout --new . \\
        [--shapes 1024x196 512x784 2048x49] [--threads 1] [--rounds 4] [--cold]

--cold evicts the caches before every call (pass_timer.cpp): without it, the few tensors of a
shape up to ~25 MB stay in L3 between calls and the passes run faster than in a training step.
A shape is CxS (channels x H*W, batch 8). Prints ms per pass, base then new, and whether the
elementwise checksums match (the reductions may differ in the last bits with summation order).
The activation is ReLU; PASS_TIMER_ACT=silu in the environment times SiLU (exp-bound, g kept between
the backward passes), PASS_TIMER_DTYPES=float32,bfloat16 limits the dtypes (pass_timer.cpp).
"""
import argparse
import ast
import collections
import os
import re
import subprocess
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def setup_functions(*names):
    """setup.py's imports and the named functions, without running its setup() call."""
    path = os.path.join(os.path.dirname(HERE), "setup.py")
    with open(path) as f:
        tree = ast.parse(f.read())
    kept = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
            or (isinstance(node, ast.FunctionDef) and node.name in names)]
    namespace = {}
    exec(compile(ast.Module(kept, []), path, "exec"), namespace)
    return [namespace[name] for name in names]

PASSES = ("stats", "apply", "reduce", "elemt")


def build(checkout, out):
    root = os.path.dirname(torch.__file__)
    host_cpu_flags, libmvec_flags, codegen_flags = setup_functions("host_cpu_flags", "libmvec_flags", "codegen_flags")
    cpu_flags = host_cpu_flags()
    defines, link = libmvec_flags(cpu_flags)
    command = (["g++", "-std=c++17", "-O3", "-fopenmp"] + codegen_flags() + cpu_flags + defines
               + ["-I", os.path.join(os.path.abspath(checkout), "csrc"), "-I", os.path.join(root, "include"),
                  "-I", os.path.join(root, "include", "torch", "csrc", "api", "include"),
                  os.path.join(HERE, "cpu_pass_timer", "pass_timer.cpp"), "-o", out,
                  "-L", os.path.join(root, "lib"), "-lc10", "-ltorch_cpu", "-Wl,-rpath," + os.path.join(root, "lib")]
               + link)
    subprocess.run(command, check=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--new", required=True)
    parser.add_argument("--shapes", nargs="+", default=["1024x196", "512x784", "2048x49", "256x196", "64x3136"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--cold", action="store_true", help="evict the caches before every call")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        binaries = {}
        for name in ("base", "new"):
            binaries[name] = os.path.join(tmp, name)
            build(getattr(args, name), binaries[name])
        times = collections.defaultdict(lambda: collections.defaultdict(list))
        checksums = collections.defaultdict(dict)
        for _ in range(args.rounds):
            for name, binary in binaries.items():
                out = subprocess.run([binary, str(args.threads)] + args.shapes, capture_output=True, text=True,
                                     env=dict(os.environ, PASS_TIMER_COLD="1" if args.cold else "0"),
                                     check=True).stdout
                for line in out.splitlines():
                    case = " ".join(line.split()[:3])
                    for what, value in re.findall(r"(\w+) ([\d.]+)", line.split("|")[0]):
                        times[case][(name, what)].append(float(value))
                    checksums[case][name] = line.split("checksum")[1].split()[0]
    print(f"ms per pass, min of {args.rounds} rounds of 60 calls' first quartile, {args.threads} thread(s)"
          f"{', caches evicted before each call' if args.cold else ''}: base -> new")
    print("| case | " + " | ".join(PASSES) + " | sum | elementwise results |")
    print("| --- |" + " ---: |" * (len(PASSES) + 1) + " --- |")
    for case, cell in times.items():
        best = {(name, what): min(values) for (name, what), values in cell.items()}
        sums = {name: sum(best[(name, what)] for what in PASSES) for name in binaries}
        same = "same" if checksums[case]["base"] == checksums[case]["new"] else "DIFFER"
        print(f"| {case} | " + " | ".join(f"{best[('base', w)]:.3f} -> {best[('new', w)]:.3f}" for w in PASSES)
              + f" | {sums['base']:.3f} -> {sums['new']:.3f} | {same} |")


if __name__ == "__main__":
    main()
