"""Timing harness: several contenders timed round-robin in one process, median and spread over
repeats (warm-up excluded), device synchronised; and the device's measured copy bandwidth.

Round-robin (every repeat times each contender once, in turn) keeps a noisy shared machine's
slow spells from landing on one contender only.
"""
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple

import torch

from .allocator import minor_faults


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Seconds per call over the repeats (each repeat: the mean of `inner` back-to-back calls):
    wall time, and the calling thread's CPU time (on a shared machine the host cost without the
    time other processes took the core; at one torch thread all the CPU work is on this thread)."""
    samples: List[float] = field(default_factory=list)
    inner: int = 1
    cpu_samples: List[float] = field(default_factory=list)
    fault_samples: List[float] = field(default_factory=list)  # minor page faults per call, whole process

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def quantile(self, q: float) -> float:
        ordered = sorted(self.samples)
        position = q * (len(ordered) - 1)
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    @property
    def iqr(self) -> float:
        return self.quantile(0.75) - self.quantile(0.25)

    def summary(self) -> dict:
        return {"median_s": self.median, "q1_s": self.quantile(0.25), "q3_s": self.quantile(0.75),
                "iqr_s": self.iqr, "min_s": min(self.samples), "repeats": len(self.samples),
                "inner": self.inner, "cpu_median_s": statistics.median(self.cpu_samples),
                "faults_per_call": statistics.median(self.fault_samples) if self.fault_samples else None}


def _time_once(fn: Callable[[], object], inner: int, device: torch.device) -> Tuple[float, float, float]:
    """(wall, thread CPU) seconds per call, and minor page faults per call."""
    synchronize(device)
    faults = minor_faults()
    start, start_cpu = time.perf_counter(), time.thread_time()
    for _ in range(inner):
        fn()
    synchronize(device)
    wall, cpu = (time.perf_counter() - start) / inner, (time.thread_time() - start_cpu) / inner
    return wall, cpu, (minor_faults() - faults) / inner


def time_contenders(contenders: Dict[str, Callable[[], object]], device: torch.device,
                    warmup: int = 2, repeats: int = 10, min_repeat_s: float = 0.01,
                    max_total_s: float = float("inf")) -> Dict[str, Timing]:
    """Times each callable. `inner` (calls per repeat) is chosen per contender so a repeat lasts
    at least min_repeat_s (timer resolution and launch jitter then stay small); repeats stop early,
    after at least 3, once max_total_s has been spent."""
    timings = {}
    for name, fn in contenders.items():
        for _ in range(warmup):
            fn()
        once, _, _ = _time_once(fn, 1, device)
        timings[name] = Timing(inner=max(1, int(min_repeat_s / max(once, 1e-9))))
    start = time.perf_counter()
    for repeat in range(repeats):
        for name, fn in contenders.items():
            wall, cpu, faults = _time_once(fn, timings[name].inner, device)
            timings[name].samples.append(wall)
            timings[name].cpu_samples.append(cpu)
            timings[name].fault_samples.append(faults)
        if repeat >= 2 and time.perf_counter() - start > max_total_s:
            break
    return timings


def copy_bandwidth(device: torch.device, nbytes: int = 256 << 20, repeats: int = 10,
                   dtype: torch.dtype = torch.float32) -> dict:
    """Achieved bandwidth of a large tensor copy (read + write counted) of `dtype` on the device:
    the ceiling a memory-bound kernel of that dtype can be compared with."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel = nbytes // itemsize
    src = torch.randn(numel, device=device, dtype=dtype)
    dst = torch.empty_like(src)
    timing = time_contenders({"copy": lambda: dst.copy_(src)}, device, warmup=2,
                             repeats=repeats)["copy"]
    return {"bytes": 2 * numel * itemsize, "median_s": timing.median,
            "gbps": 2 * numel * itemsize / timing.median / 1e9, "repeats": len(timing.samples)}
