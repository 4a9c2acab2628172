"""Loads the emulated CUDA backend (tools/cuda_emulator/build.py's build_backend) as
pyfusedbn._C, for tests only: the CUDA bindings' host code and csrc/cuda's kernels, run by the
CUDA execution emulator over CPU memory and registered for CPU tensors, behind the unchanged
Python layer. Must run before anything imports pyfusedbn (tests/conftest.py does), in a process of its own
(the normal _C and this one define the same op library), so it is loaded as a pytest plugin:
`PYTHONPATH=tests python -m pytest -p emulated_backend tests/test_emulated_backend.py`
(`make test-emulated-backend`). PYFUSEDBN_EMU_SANITIZE=1: built with ASan + UBSan.
PYFUSEDBN_EMU_LIMITS=1: built with GroupNorm's grid and part limits lowered (build.SHRUNK_LIMITS;
tests/test_emulated_backend_limits.py)."""
import importlib.util
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "cuda_emulator"))
import build as emu_build  # noqa: E402

SANITIZE = os.environ.get("PYFUSEDBN_EMU_SANITIZE") == "1"
SHRUNK_LIMITS = os.environ.get("PYFUSEDBN_EMU_LIMITS") == "1"
SUFFIX = ("_backend_limits" if SHRUNK_LIMITS else "") + ("_sanitize" if SANITIZE else "")
BUILD_DIR = emu_build.DEFAULT_BUILD + SUFFIX


def load():
    """Builds (incrementally) and loads the emulated backend; returns its ops namespace."""
    if "pyfusedbn._C" in sys.modules:
        loaded = sys.modules["pyfusedbn._C"].__file__
        if not loaded.startswith(BUILD_DIR):
            raise RuntimeError(f"emulated backend: the normal library is already loaded ({loaded}); "
                               "run the emulated-backend tests in their own process (make test-emulated-backend)")
        return torch.ops.pyfusedbn_emulator
    if SHRUNK_LIMITS:  # the drivers' limits build (tests/test_cuda_emulated.py) has its kernel objects
        library = emu_build.build_backend_variant(os.path.basename(BUILD_DIR), emu_build.SHRUNK_LIMITS,
                                                  "cuda_emulated_limits" + ("_sanitize" if SANITIZE else ""),
                                                  sanitize=SANITIZE)
    else:
        library = emu_build.build_backend(BUILD_DIR, sanitize=SANITIZE)
    spec = importlib.util.spec_from_file_location("pyfusedbn._C", library)
    module = importlib.util.module_from_spec(spec)
    sys.modules["pyfusedbn._C"] = module
    spec.loader.exec_module(module)
    return torch.ops.pyfusedbn_emulator


if __name__ != "__main__":
    load()  # as a pytest plugin (-p emulated_backend): before conftest imports pyfusedbn
