"""Same inputs, same bits: outputs, every gradient and the running statistics are bitwise equal
across repeated calls (CPU at a fixed thread count; CUDA where present). The reductions merge
per-thread (CPU) or per-block (CUDA) partials in a fixed order and use no atomics: see README,
Determinism."""
import copy

import pytest
import torch

import pyfusedbn
from helpers import random_input
from test_parity import make_module

CUDA = torch.cuda.is_available() and pyfusedbn.backends()["cuda"]
DEVICES = ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs CUDA and pyfusedbn's CUDA kernels")])]
REPEATS = 3

# Large enough that the CPU kernels split the work over threads (and CUDA over many blocks).
CASES = {
    "4d_nchw": ((8, 16, 24, 24), torch.contiguous_format),
    "4d_channels_last": ((8, 16, 24, 24), torch.channels_last),
    "2d_rows": ((4096, 24), torch.contiguous_format),
    "5d_channels_last_3d": ((4, 12, 6, 8, 10), torch.channels_last_3d),
}


@pytest.fixture
def fixed_threads():
    """The CPU reductions' partials depend on how many threads split the work: fix it."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def run(module, x, residual, dy):
    """One training step then an eval forward: everything that must be reproducible."""
    x = x.clone().requires_grad_()
    residual = residual.clone().requires_grad_()
    module.train()
    y = module(x, residual)
    y.backward(dy)
    module.eval()
    with torch.no_grad():
        y_eval = module(x, residual)
    return {"output": y, "grad input": x.grad, "grad residual": residual.grad,
            "grad weight": module.weight.grad, "grad bias": module.bias.grad,
            "running_mean": module.running_mean, "running_var": module.running_var,
            "eval output": y_eval}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("device", DEVICES)
def test_repeated_calls_are_bitwise_identical(device, case, dtype, generator, fixed_threads):
    shape, memory_format = CASES[case]
    original = make_module(len(shape), shape[1], dtype, generator, device=device, activation="silu")
    x = random_input(shape, dtype, memory_format, generator).to(device)
    residual = random_input(shape, dtype, memory_format, generator, mean=0.0).to(device)
    dy = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype).to(device)
    first = run(copy.deepcopy(original), x, residual, dy)
    for repeat in range(1, REPEATS):
        again = run(copy.deepcopy(original), x, residual, dy)
        for name, value in first.items():
            assert torch.equal(again[name], value), (
                f"repeat {repeat}: {name} differs, max |diff| "
                f"{(again[name].double() - value.double()).abs().max().item():.3e}")


def test_deterministic_algorithms_mode_runs_the_fused_kernels(generator):
    """torch.use_deterministic_algorithms(True) neither refuses nor reroutes the ops."""
    before = torch.are_deterministic_algorithms_enabled()
    calls = torch.ops.pyfusedbn.kernel_calls("cpu")
    torch.use_deterministic_algorithms(True)
    try:
        module = make_module(4, 6, torch.float32, generator, activation="relu")
        x = random_input((4, 6, 5, 5), torch.float32, generator=generator).requires_grad_()
        module(x).sum().backward()
    finally:
        torch.use_deterministic_algorithms(before)
    assert torch.ops.pyfusedbn.kernel_calls("cpu") > calls
    assert x.grad is not None and torch.isfinite(x.grad).all()
