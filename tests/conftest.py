import zlib

import pytest
import torch

import pyfusedbn  # noqa: F401  (fails loudly if the compiled kernels are missing)


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
