import os
import zlib

import pytest
import torch
from hypothesis import HealthCheck, settings

import pyfusedbn  # noqa: F401  (fails loudly if the compiled kernels are missing)

# Property-based tests (tests/test_fuzz.py). "ci", the default: a fixed budget of examples drawn
# deterministically (derandomize: the same examples on every run, so CI is reproducible).
# "long": `pytest --hypothesis-profile long tests/test_fuzz.py` for hunting, fresh examples each run.
# Examples run kernels on the CPU (and GPU): no deadline, and slow data generation is expected.
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=150, derandomize=True, deadline=None,
                          suppress_health_check=_QUIET, print_blob=True)
settings.register_profile("long", max_examples=5000, deadline=None, suppress_health_check=_QUIET,
                          print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def poison_empty():
    """Fill every newly allocated tensor (ours included: the ops allocate with at::empty) with
    NaN, so an output element a kernel forgot to write shows up as NaN."""
    old_det = torch.are_deterministic_algorithms_enabled()
    old_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det)
        torch.utils.deterministic.fill_uninitialized_memory = old_fill


@pytest.fixture
def generator(request):
    """A generator seeded from the test id: fresh values per case, reproducible per case."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return torch.Generator().manual_seed(seed)
