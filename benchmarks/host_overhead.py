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
Host time: median over repeats of the call (and the ratio of the fastest repeats), at --threads
threads (1 by default: the host cost of dispatch, not the kernels' parallel speed). Results: a
table on stdout and <out>/host_overhead.json.
"""
import argparse
from typing import Callable, Dict

import torch
import torch.nn as nn

from pyfusedbn.testing import LAYER_SHAPE, count_ops, layer_steps

from .common.results import save_json
from .common.timing import time_contenders
from .models import ConvNet

MODEL_INPUT = (4, 1, 16, 16)


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
    out["host_ratio"] = out["fused"]["host_s"]["median_s"] / out["eager"]["host_s"]["median_s"]
    # The fastest repeat is what the host needs when nothing else runs (a shared machine's
    # preemptions only add time): printed beside the median.
    out["host_ratio_min"] = out["fused"]["host_s"]["min_s"] / out["eager"]["host_s"]["min_s"]
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = {f"layer BatchNormAct2d(16) {LAYER_SHAPE} fwd+bwd": measure(layer_steps(), args.repeats),
             f"model ConvNet {MODEL_INPUT} train step": measure(model_steps(), args.repeats)}
    print(f"host overhead, CPU, {args.threads} thread(s), torch {torch.__version__}")
    print(f"{'case':46} {'ops fused':>9} {'ops eager':>9} {'ratio':>6} "
          f"{'host fused':>11} {'host eager':>11} {'ratio':>6} {'ratio of min':>12}")
    for case, r in cases.items():
        fused, eager = r["fused"]["host_s"]["median_s"], r["eager"]["host_s"]["median_s"]
        print(f"{case:46} {r['fused']['ops']:9d} {r['eager']['ops']:9d} {r['ops_ratio']:6.2f} "
              f"{fused * 1e6:9.1f}us {eager * 1e6:9.1f}us {r['host_ratio']:6.2f} "
              f"{r['host_ratio_min']:12.2f}")
    layer = next(iter(cases.values()))
    print("layer ops, fused:", ", ".join(f"{k} {v}" for k, v in layer["fused"]["per_op"].items()))
    print("layer ops, eager:", ", ".join(f"{k} {v}" for k, v in layer["eager"]["per_op"].items()))
    path = save_json(args.out, "host_overhead.json", {"threads": args.threads, "cases": cases})
    print(f"wrote {path}")
    return cases


if __name__ == "__main__":
    main()
