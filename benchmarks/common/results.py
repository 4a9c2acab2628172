"""Where results go (JSON per entry point, one folder) and the machine they came from."""
import datetime
import json
import os
import platform
import subprocess
import sys

import torch

import pyfusedbn

# The folder of the entry points (`python -m benchmarks.X` runs benchmarks/X.py).
BENCHMARKS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def save_json(out_dir: str, name: str, payload: dict) -> str:
    """payload as out_dir/name, with the machine and the command line added."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    payload = dict(payload, machine=machine_info(), command=command_line())
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=str)
    return path


def json_config(config: dict) -> dict:
    """A stage's settings as JSON holds them: tuples as lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def load_json(out_dir: str, name: str):
    path = os.path.join(out_dir, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def command_line() -> str:
    """The command as typed: `python -m benchmarks.X ...` for the package's entry points."""
    script, args = sys.argv[0], sys.argv[1:]
    if os.path.dirname(os.path.abspath(script)) == BENCHMARKS_DIR:
        stem = os.path.splitext(os.path.basename(script))[0]
        head = ["python", "-m", "benchmarks" if stem == "__main__" else f"benchmarks.{stem}"]
    else:
        head = ["python", script]
    return " ".join(head + args)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCHMARKS_DIR, text=True,
                              capture_output=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict:
    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "host": platform.node(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "pyfusedbn": pyfusedbn.__version__,
            "backends": pyfusedbn.backends(), "git_commit": _git_commit(),
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    return info
