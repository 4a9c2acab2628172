"""pytest-benchmark microbenchmarks (the headline rows), so commits can be compared:

    pytest tests/test_microbench.py --benchmark-autosave          # on commit A
    pytest tests/test_microbench.py --benchmark-compare           # on commit B, vs A
    pytest tests/test_microbench.py --benchmark-compare --benchmark-compare-fail=median:10%

Without pytest-benchmark (`make bench-deps` installs it) each row runs once, unmeasured, so that
`make test` still checks the fused output against eager on every headline row. Threads:
PYFUSEDBN_BENCH_THREADS (default 2); device: PYFUSEDBN_BENCH_DEVICE (default cuda when present).
"""
import importlib.util
import os

import pytest
import torch

from benchmarks import cases, microbench
from benchmarks.common.cli import resolve_device
from benchmarks.common.timing import synchronize

DEVICE = resolve_device(os.environ.get("PYFUSEDBN_BENCH_DEVICE", "auto"))
torch.set_num_threads(int(os.environ.get("PYFUSEDBN_BENCH_THREADS", "2")))

if importlib.util.find_spec("pytest_benchmark") is None:
    class _RunOnce:
        """pytest-benchmark's fixture, reduced to one unmeasured call."""

        def __init__(self):
            self.group, self.extra_info = None, {}

        def pedantic(self, target, warmup_rounds=0, rounds=1, iterations=1):
            return target()

    @pytest.fixture
    def benchmark():
        return _RunOnce()


@pytest.mark.parametrize("contender", ["fused", "eager"])
@pytest.mark.parametrize("case", cases.headline_cases(), ids=lambda c: c.name)
def test_headline(benchmark, case, contender):
    steps, _, max_abs_diff = microbench.build(case, DEVICE, [contender])
    step = steps[contender]
    assert max_abs_diff < 1e-3

    def synchronized_step():
        step()
        synchronize(DEVICE)

    benchmark.group = case.name
    benchmark.extra_info.update(case.as_dict(), device=DEVICE.type, contender=contender,
                                bytes=microbench.bytes_moved(case))
    benchmark.pedantic(synchronized_step, warmup_rounds=2, rounds=15, iterations=1)
