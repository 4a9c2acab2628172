"""Host overhead of a fused layer: how many ops it dispatches and how long the host spends on it.

    python -m benchmarks.host_overhead [--repeats 15] [--threads 1] [--out benchmarks/results]

On a GPU every dispatched op is at least one kernel launch, so for the small late layers of a
CNN the op count, not the bandwidth, sets the step time. On the CPU the same count is measurable
without a GPU. Two cases, fused (pyfusedbn) against eager torch:
  - layer: one training forward+backward of BatchNormAct2d(16, relu) on a (8, 16, 4, 4) input,
    against nn.BatchNorm2d + nn.ReLU;
  - model: one whole training step (forward, cross-entropy, backward, SGD) of the ResNet-style
    ConvNet of benchmarks/models.py (batch 4, 1x16x16), norm="fused" against norm="torch".
Ops: the aten::/pyfusedbn:: events of torch.profiler's key_averages() for one call after a
warm-up, nested ops counted (an op that calls another counts twice: both are dispatches).
Host time: median over repeats of the call (and the ratio of the fastest repeats, and of the
calling thread's CPU time, which a busy machine's preemptions leave out), at --threads threads (1
by default: the host cost of dispatch, not the kernels' parallel speed). Results: a table on
stdout and <out>/host_overhead.json; `make bench` runs it too (benchmarks/run.py).
"""
import argparse
from typing import Callable, Dict

import torch
import torch.nn as nn

from pyfusedbn.testing import LAYER_SHAPE, count_ops, layer_steps

from .common.results import save_json
from .common.timing import time_contenders
from .models import ConvNet
from .tables import host_overhead_table

MODEL_INPUT = (4, 1, 16, 16)
JSON_NAME = "host_overhead.json"


def model_steps(seed: int = 0) -> Dict[str, Callable[[], None]]:
    """One whole training step of the ResNet-style ConvNet, fused and eager (same weights)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(MODEL_INPUT, generator=generator)
    target = torch.randint(0, 10, (MODEL_INPUT[0],), generator=generator)
    steps = {}
    torch.manual_seed(seed)
    eager = ConvNet(norm="torch")
    fused = ConvNet(norm="fused")
    fused.load_state_dict(eager.state_dict())
    for name, model in (("fused", fused), ("eager", eager)):
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step(model=model, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), target).backward()
            optimizer.step()

        steps[name] = step
    return steps


def measure(steps: Dict[str, Callable[[], None]], repeats: int) -> dict:
    timings = time_contenders(steps, torch.device("cpu"), warmup=3, repeats=repeats)
    out = {}
    for name, fn in steps.items():
        total, per_op = count_ops(fn)
        out[name] = {"ops": total, "per_op": per_op, "host_s": timings[name].summary()}
    out["ops_ratio"] = out["fused"]["ops"] / out["eager"]["ops"]
    fused, eager = out["fused"]["host_s"], out["eager"]["host_s"]
    out["host_ratio"] = fused["median_s"] / eager["median_s"]
    # The fastest repeat is what the host needs when nothing else runs (a shared machine's
    # preemptions only add time), and the thread's CPU time leaves them out too: both printed
    # beside the median.
    out["host_ratio_min"] = fused["min_s"] / eager["min_s"]
    out["host_ratio_cpu"] = fused["cpu_median_s"] / eager["cpu_median_s"]
    return out


def run(repeats: int = 15, threads: int = 1) -> dict:
    """Both cases at `threads` torch threads (the caller's setting is restored)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cases = {f"layer BatchNormAct2d(16) {LAYER_SHAPE} fwd+bwd": measure(layer_steps(), repeats),
                 f"model ConvNet {MODEL_INPUT} train step": measure(model_steps(), repeats)}
    finally:
        torch.set_num_threads(previous)
    return {"threads": threads, "repeats": repeats, "cases": cases}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    result = run(args.repeats, args.threads)
    print(f"host overhead, CPU, {args.threads} thread(s), torch {torch.__version__}")
    print(host_overhead_table(result))
    layer = next(iter(result["cases"].values()))
    print("layer ops, fused:", ", ".join(f"{k} {v}" for k, v in layer["fused"]["per_op"].items()))
    print("layer ops, eager:", ", ".join(f"{k} {v}" for k, v in layer["eager"]["per_op"].items()))
    path = save_json(args.out, JSON_NAME, result)
    print(f"wrote {path}")
    return result["cases"]


if __name__ == "__main__":
    main()
