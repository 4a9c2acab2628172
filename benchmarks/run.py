"""The whole suite: microbenchmarks, CPU dtypes, host overhead, training benchmark, training
study, then REPORT.md.

    python -m benchmarks.run --quick|--full [--device cpu|cuda] [--threads 2]
                             [--out benchmarks/results] [--data-dir DIR] [--skip study ...]

Quick mode (the README's `make bench`) fits a few minutes on 2 CPU cores: the headline
microbenchmark rows, the CPU dtype comparison on QUICK_DTYPE_SHAPES (the full mode: every
ResNet-50 shape), the host overhead of a tiny layer and model step (one thread), a short training
comparison on a few thousand images, and the study's quick mode (3 seeds per cell). Without Fashion-MNIST the microbenchmarks and the synthetic
training rows still run, and the report says what was skipped and how to install the data.
"""
import argparse
import os
import time

import torch

from . import cpu_dtypes, host_overhead, microbench, report, study, tables, train
from .cases import BATCH, Case, resnet50_bn_shapes
from .common.cli import add_common_args, resolve_device, stage_args
from .common.results import command_line, save_json
from .common.timing import copy_bandwidth
from .data import DEFAULT_DATA_DIR, DataMissingError

STAGES = ("microbench", "cpu_dtypes", "host_overhead", "train", "study")
STAGE_FILES = {"microbench": "microbench.json", "cpu_dtypes": "cpu_dtypes.json",
               "host_overhead": host_overhead.JSON_NAME, "train": "train.json",
               "study": "study.json"}
# The quick mode's CPU dtype rows: ResNet-50's first and last shapes and the one where float16
# lost most (issue 24), each in both layouts and every dtype.
QUICK_DTYPE_SHAPES = ((64, 56), (512, 14), (2048, 7))
# Copy bandwidth per dtype: a tensor well beyond the caches, fewer repeats in quick mode.
COPY_BYTES = 64 << 20


def cpu_dtypes_stage(quick: bool, threads: int, batch: int = BATCH["cpu"], shapes=None,
                     copy_bytes: int = COPY_BYTES) -> dict:
    """benchmarks.cpu_dtypes' rows (fused vs eager BatchNorm2d+ReLU training step per dtype and
    layout) with each fused row's bandwidth against a copy of its own dtype. shapes: (C, H, W,
    label) tuples, by default ResNet-50's (QUICK_DTYPE_SHAPES of them in quick mode)."""
    if shapes is None:
        shapes = [s for s in resnet50_bn_shapes() if not quick or s[:2] in QUICK_DTYPE_SHAPES]
    repeats = 5 if quick else 15
    rows = cpu_dtypes.run(threads, batch, repeats, list(cpu_dtypes.DTYPES), shapes=shapes)
    bandwidth = {dtype: copy_bandwidth(torch.device("cpu"), copy_bytes, repeats,
                                       getattr(torch, dtype)) for dtype in cpu_dtypes.DTYPES}
    for row in rows:
        # The fused algorithm's compulsory traffic (microbench's count for a training fwd+bwd).
        row["bytes"] = microbench.bytes_moved(Case(tuple(row["shape"]), dtype=row["dtype"],
                                                   mode="fwd_bwd"))
        row["gbps"] = row["bytes"] / (row["fused_ms"] / 1e3) / 1e9
        row["pct_copy_bw"] = 100 * row["gbps"] / bandwidth[row["dtype"]]["gbps"]
    return {"threads": threads, "batch": batch, "repeats": repeats, "rows": rows,
            "copy_bandwidth": bandwidth}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--compile", default=None, choices=microbench.COMPILE_POLICIES)
    parser.add_argument("--skip", nargs="+", default=[], choices=STAGES)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    start, stage_s, skipped = time.perf_counter(), {}, {}
    for stage in STAGES:  # no stale results from an earlier run in this report
        path = os.path.join(args.out, STAGE_FILES[stage])
        if os.path.exists(path):
            os.remove(path)

    if "microbench" not in args.skip:
        began = time.perf_counter()
        policy = args.compile or ("headline" if args.quick else "relu-fp32")
        result = microbench.run(microbench.select_cases(args.quick, device.type), device, policy,
                                progress=args.progress)
        save_json(args.out, STAGE_FILES["microbench"], result)
        stage_s["microbench"] = time.perf_counter() - began
        print(tables.microbench_table(result, headline_only=True), "\n", flush=True)

    if "cpu_dtypes" not in args.skip:
        began = time.perf_counter()
        result = cpu_dtypes_stage(args.quick, args.threads)
        save_json(args.out, STAGE_FILES["cpu_dtypes"], result)
        stage_s["cpu_dtypes"] = time.perf_counter() - began
        print(tables.cpu_dtypes_table(result), "\n", flush=True)

    if "host_overhead" not in args.skip:
        began = time.perf_counter()
        result = host_overhead.run(repeats=15)
        save_json(args.out, STAGE_FILES["host_overhead"], result)
        stage_s["host_overhead"] = time.perf_counter() - began
        print(tables.host_overhead_table(result), "\n", flush=True)

    if "train" not in args.skip:
        began = time.perf_counter()
        train_args = stage_args(train.add_args, args)
        try:
            result = train.run(train_args, device)
        except DataMissingError as e:
            skipped["Fashion-MNIST training benchmark"] = f"{e} (synthetic rows still ran)"
            train_args.synthetic = True
            result = train.run(train_args, device)
        save_json(args.out, STAGE_FILES["train"], result)
        stage_s["train"] = time.perf_counter() - began
        print(tables.train_table(result), "\n", flush=True)

    if "study" not in args.skip:
        began = time.perf_counter()
        try:
            result = study.run(stage_args(study.add_args, args), device)
            save_json(args.out, STAGE_FILES["study"], result)
            print(tables.study_tables(result), "\n", flush=True)
        except DataMissingError as e:
            skipped["training study"] = str(e)
        stage_s["study"] = time.perf_counter() - began

    run_info = {"mode": "quick" if args.quick else "full", "command": command_line(),
                "wall_s": time.perf_counter() - start, "stage_s": stage_s, "skipped": skipped}
    save_json(args.out, "run.json", run_info)
    path = report.write_report(args.out, plots=True, run_info=run_info)
    for stage, reason in skipped.items():
        print(f"SKIPPED {stage}: {reason}")
    print(f"stages: " + ", ".join(f"{k} {v:.0f} s" for k, v in stage_s.items())
          + f"; total {run_info['wall_s']:.0f} s")
    print(f"report: {path}")


if __name__ == "__main__":
    main()
