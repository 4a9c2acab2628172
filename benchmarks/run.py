"""The whole suite: microbenchmarks, training benchmark, training study, then REPORT.md.

    python -m benchmarks.run --quick|--full [--device cpu|cuda] [--threads 2]
                             [--out benchmarks/results] [--data-dir DIR] [--skip study ...]

Quick mode (the README's `make bench`) fits a few minutes on 2 CPU cores: the headline
microbenchmark rows, a short training comparison on a few thousand images, and a one-epoch slice
of the study. Without Fashion-MNIST the microbenchmarks and the synthetic training rows still run,
and the report says what was skipped and how to install the data.
"""
import argparse
import os
import time

import torch

from . import microbench, report, study, tables, train
from .common.cli import add_common_args, resolve_device, stage_args
from .common.results import command_line, save_json
from .data import DEFAULT_DATA_DIR, DataMissingError

STAGES = ("microbench", "train", "study")
STAGE_FILES = {"microbench": "microbench.json", "train": "train.json", "study": "study.json"}


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
