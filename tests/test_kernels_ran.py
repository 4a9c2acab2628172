"""Proof that the compiled kernels, not a Python reference, produce the numbers; and that a
missing compiled library is an ImportError that says so, not a silent fallback."""
import os
import shutil
import subprocess
import sys

import torch

import pyfusedbn
from pyfusedbn._ops import OP_NAMES, ops


def test_backends_report_compiled_cpu_kernels():
    assert pyfusedbn.backends()["cpu"] is True
    assert pyfusedbn.backends()["cuda"] == torch._C._dispatch_has_kernel_for_dispatch_key(
        "pyfusedbn::batch_norm_act_train", "CUDA")
    for name in OP_NAMES:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"pyfusedbn::{name}", "CPU"), name


def test_forward_and_backward_run_the_cpu_kernels():
    module = pyfusedbn.BatchNormAct2d(3)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    before = ops.kernel_calls("cpu")
    module(x).sum().backward()
    # stats + apply forward, reduce + elementwise backward
    assert ops.kernel_calls("cpu") - before == 4


def cpu_kernel_source(op):
    """Where the dispatcher's CPU kernel of op was registered (a C++ file:line, or torch's
    library.py for a kernel registered from Python)."""
    for line in torch._C._dispatch_dump(op).splitlines():
        if line.startswith("CPU: registered at "):
            return line[len("CPU: registered at "):].split(" :: ")[0]
    raise AssertionError(f"{op} has no CPU kernel:\n{torch._C._dispatch_dump(op)}")


def test_module_uses_the_op_library():
    library_file = pyfusedbn._ops._C.__file__
    assert library_file.endswith(".so") or library_file.endswith(".pyd"), library_file
    # Every op's CPU kernel is C++ from this project's csrc/, not a Python registration.
    for op in OP_NAMES + ("batch_norm_act_backward", "group_norm_act", "group_norm_act_backward"):
        source = cpu_kernel_source(f"pyfusedbn::{op}")
        assert "csrc/" in source and source.split(":")[0].endswith(".cpp"), (op, source)
    for module in (pyfusedbn.BatchNormAct2d(3), pyfusedbn.GroupNormAct(1, 3)):
        before = ops.kernel_calls("cpu")
        module(torch.randn(2, 3, 4, 4))
        assert ops.kernel_calls("cpu") > before, type(module).__name__


def test_poison_fixture_poisons(poison_empty):
    assert torch.isnan(torch.empty(16)).all()


def test_import_without_compiled_library_fails_loudly(tmp_path):
    package = os.path.dirname(pyfusedbn.__file__)
    copy = tmp_path / "pyfusedbn"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    # Drop the editable install's finder, which would map pyfusedbn._C back to the real build.
    code = ("import sys; sys.meta_path = [f for f in sys.meta_path if '__editable__' not in str(f)]; "
            "import pyfusedbn")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "compiled kernels" in result.stderr and "no pure-Python fallback" in result.stderr
