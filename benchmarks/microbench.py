"""Microbenchmark: fused BatchNormAct vs eager nn.BatchNorm*d + activation vs torch.compile of the
eager pair, in one process, round-robin.

    python -m benchmarks.microbench --quick|--full [--device cpu|cuda] [--threads 2] [--out DIR]

Bytes moved are the fused algorithm's compulsory traffic, the same count for every contender (so
GB/s compares like with like): forward eval reads x and writes y; forward train reads x twice
(statistics, then normalise) and writes y; backward reads dy and x twice (reduce, then
elementwise) and writes dx; a residual adds its read per pass (and its gradient's write).
"""
import argparse
import time
from typing import Dict, List, Optional

import torch
import torch.nn as nn

import pyfusedbn
from pyfusedbn.activations import torch_activation

from . import cases as cases_mod, tables
from .common.cli import add_common_args, resolve_device
from .common.progress import progress_bar
from .common.results import save_json
from .common.timing import copy_bandwidth, time_contenders

CONTENDERS = ("fused", "eager", "compiled")
COMPILE_POLICIES = ("none", "headline", "relu-fp32", "all")
_FUSED = {2: pyfusedbn.BatchNormAct1d, 3: pyfusedbn.BatchNormAct1d, 4: pyfusedbn.BatchNormAct2d,
          5: pyfusedbn.BatchNormAct3d}
_TORCH_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


class EagerBatchNormAct(nn.Module):
    """The unfused reference: nn.BatchNorm*d, then the residual add, then the activation."""

    def __init__(self, rank: int, channels: int, activation: str):
        super().__init__()
        self.bn = _TORCH_BN[rank](channels)
        self.act = torch_activation(activation)

    def forward(self, x, residual=None):
        y = self.bn(x)
        if residual is not None:
            y = y + residual
        return self.act(y)


def bytes_moved(case: cases_mod.Case) -> int:
    """Compulsory traffic of the fused algorithm, per the module docstring."""
    numel = 1
    for n in case.shape:
        numel *= n
    r = 1 if case.residual else 0
    passes = {"fwd_eval": 2 + r, "fwd_train": 3 + r, "fwd_bwd": (3 + r) + (5 + 3 * r)}[case.mode]
    return passes * numel * torch.empty((), dtype=getattr(torch, case.dtype)).element_size()


def wants_compile(case: cases_mod.Case, policy: str) -> bool:
    if policy == "all":
        return True
    if policy == "headline":
        return case.headline and case.memory_format == "nchw" and case.mode == "fwd_bwd" \
            and len(case.shape) == 4
    if policy == "relu-fp32":
        return case.activation == "relu" and case.dtype == "float32"
    return False


def _make_step(module: nn.Module, case: cases_mod.Case, x, residual, grad):
    module.train(case.mode != "fwd_eval")
    if case.mode != "fwd_bwd":
        def forward():
            with torch.no_grad():
                return module(x, residual)
        return forward

    def forward_backward():
        x.grad = None
        if residual is not None:
            residual.grad = None
        module.zero_grad(set_to_none=True)
        module(x, residual).backward(grad)
    return forward_backward


def build(case: cases_mod.Case, device: torch.device, contenders, seed: int = 0):
    """Inputs and one step callable per contender; compile time of 'compiled' measured here."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    dtype = getattr(torch, case.dtype)
    rank, channels = len(case.shape), case.shape[1]
    fmt = _CHANNELS_LAST[rank] if case.memory_format == "channels_last" else torch.contiguous_format

    def tensor():
        t = torch.randn(case.shape, generator=gen).to(device=device, dtype=dtype)
        return t.contiguous(memory_format=fmt)

    needs_grad = case.mode == "fwd_bwd"
    x = tensor().requires_grad_(needs_grad)
    residual = tensor().requires_grad_(needs_grad) if case.residual else None
    grad = tensor() if needs_grad else None
    modules = {"fused": _FUSED[rank](channels, activation=case.activation),
               "eager": EagerBatchNormAct(rank, channels, case.activation)}
    steps, compile_s = {}, None
    for name in contenders:
        if name == "compiled":
            torch._dynamo.reset()  # fresh cache: no recompile limit, no automatic dynamic shapes
            module = torch.compile(EagerBatchNormAct(rank, channels, case.activation).to(device),
                                   dynamic=False)
        else:
            module = modules[name].to(device)
        steps[name] = _make_step(module, case, x, residual, grad)
        if name == "compiled":
            start = time.perf_counter()
            steps[name]()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            compile_s = time.perf_counter() - start
    # Sanity: the fused output matches the eager one (a fast wrong kernel must not look good).
    with torch.no_grad():
        train = case.mode != "fwd_eval"
        fused = modules["fused"].to(device).train(train)(x, residual).float()
        eager = modules["eager"].to(device).train(train)(x, residual).float()
        max_abs_diff = (fused - eager).abs().max().item()
    return steps, compile_s, max_abs_diff


def run_case(case: cases_mod.Case, device: torch.device, compile_policy: str, copy_gbps: float,
             repeats: int, max_case_s: float) -> List[dict]:
    contenders = ["fused", "eager"] + (["compiled"] if wants_compile(case, compile_policy) else [])
    steps, compile_s, max_abs_diff = build(case, device, contenders)
    timings = time_contenders(steps, device, warmup=2, repeats=repeats, max_total_s=max_case_s)
    nbytes = bytes_moved(case)
    eager_median = timings["eager"].median
    rows = []
    for name, timing in timings.items():
        row = {"case": case.as_dict(), "name": case.name, "contender": name, "device": device.type,
               **timing.summary(), "bytes": nbytes, "gbps": nbytes / timing.median / 1e9,
               "speedup_vs_eager": eager_median / timing.median,
               "max_abs_diff_fused_vs_eager": max_abs_diff}
        row["pct_copy_bw"] = 100.0 * row["gbps"] / copy_gbps if copy_gbps else None
        if name == "compiled":
            row["compile_s"] = compile_s
        rows.append(row)
    return rows


def run(case_list, device: torch.device, compile_policy: str = "headline", repeats: int = 15,
        max_case_s: float = 5.0, progress: bool = True) -> Dict:
    bandwidth = copy_bandwidth(device)
    rows = []
    for case in progress_bar(case_list, desc="microbench", enabled=progress):
        rows.extend(run_case(case, device, compile_policy, bandwidth["gbps"], repeats, max_case_s))
    return {"copy_bandwidth": bandwidth, "compile_policy": compile_policy, "rows": rows,
            "threads": torch.get_num_threads(), "device": device.type}


def select_cases(quick: bool, device: str, limit: Optional[int] = None):
    chosen = cases_mod.headline_cases() if quick else cases_mod.full_cases(device)
    return chosen[:limit] if limit else chosen


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--compile", default=None, choices=COMPILE_POLICIES,
                        help="which rows get a torch.compile contender (default: headline in "
                             "quick mode, relu-fp32 in full mode)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--limit", type=int, default=None, help="first N cases only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    policy = args.compile or ("headline" if args.quick else "relu-fp32")
    result = run(select_cases(args.quick, device.type, args.limit), device, policy, args.repeats,
                 progress=args.progress)
    save_json(args.out, "microbench.json", result)
    print(tables.microbench_table(result, headline_only=True))
    print()
    print(tables.copy_bandwidth_line(result))


if __name__ == "__main__":
    main()
