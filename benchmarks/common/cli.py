"""The command line the benchmark stages share, the device they run on, and a stage's main."""
import argparse

import torch

from .results import save_json


def add_common_args(parser: argparse.ArgumentParser, progress: bool = True) -> None:
    """--quick (default) or --full, --device, --threads, --out and (progress=True) --no-progress."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="quick", action="store_true", default=True)
    mode.add_argument("--full", dest="quick", action="store_false")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda if present)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    parser.add_argument("--out", default="benchmarks/results", help="results folder")
    if progress:
        parser.add_argument("--no-progress", dest="progress", action="store_false")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def stage_main(argv, description, add_args, run, json_name, table):
    """The command line of a benchmark stage (train, study): common and own arguments, run,
    results to `json_name` under --out, the table printed."""
    parser = argparse.ArgumentParser(description=description)
    add_common_args(parser)
    add_args(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args, resolve_device(args.device))
    save_json(args.out, json_name, result)
    print(table(result))


def stage_args(add_args, base: argparse.Namespace) -> argparse.Namespace:
    """A stage's own defaults, with the run's shared options (those of `base`) laid over them."""
    parser = argparse.ArgumentParser()
    add_common_args(parser)
    add_args(parser)
    args = parser.parse_args([])
    for key in ("quick", "device", "threads", "out", "progress", "data_dir"):
        setattr(args, key, getattr(base, key))
    return args
