"""pytest-benchmark microbenchmarks (the headline rows), so commits can be compared:

    pytest benchmarks/test_microbench.py --benchmark-autosave          # on commit A
    pytest benchmarks/test_microbench.py --benchmark-compare           # on commit B, vs A
    pytest benchmarks/test_microbench.py --benchmark-compare --benchmark-compare-fail=median:10%

Not collected by `make test` (which runs tests/). Threads: PYFUSEDBN_BENCH_THREADS (default 2);
device: PYFUSEDBN_BENCH_DEVICE (default cuda when present).
"""
import os

import pytest
import torch

from benchmarks import cases, microbench
from benchmarks.timing import synchronize

pytest.importorskip("pytest_benchmark")

DEVICE = microbench.resolve_device(os.environ.get("PYFUSEDBN_BENCH_DEVICE", "auto"))
torch.set_num_threads(int(os.environ.get("PYFUSEDBN_BENCH_THREADS", "2")))


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
