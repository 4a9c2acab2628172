"""The issue's headline comparison as a plain steady-state loop: one module each, the same input
every step, median of 15 after 3 warm-up steps, contenders timed back to back.

`python -m benchmarks.steady_loop` — complements benchmarks.microbench (round-robin over fresh
inputs, which also times allocation effects and varies more run to run on a shared machine).
"""
import statistics
import time

import torch
import torch.nn as nn

import pyfusedbn

CASES = [((32, 64, 56, 56), False), ((32, 64, 56, 56), True), ((64, 256, 14, 14), False), ((256, 512), False)]


def median_ms(fn, repeats=15, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(threads=2):
    torch.set_num_threads(threads)
    print(f"threads {threads}, float32, training mode, median of 15 (ms)")
    print("| shape | layout | eager fwd+bwd | fused fwd+bwd | speed-up | eager fwd | fused fwd | speed-up |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for shape, channels_last in CASES:
        x = torch.randn(shape)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        x.requires_grad_()
        grad = torch.randn_like(x)
        bn, fused = (nn.BatchNorm1d, pyfusedbn.BatchNormAct1d) if len(shape) == 2 else \
            (nn.BatchNorm2d, pyfusedbn.BatchNormAct2d)
        eager = nn.Sequential(bn(shape[1]), nn.ReLU())
        ours = fused(shape[1])
        step = lambda m: m(x).backward(grad)  # noqa: E731

        def forward(m):
            with torch.no_grad():
                m(x)

        eb, fb = median_ms(lambda: step(eager)), median_ms(lambda: step(ours))
        ef, ff = median_ms(lambda: forward(eager)), median_ms(lambda: forward(ours))
        layout = "channels_last" if channels_last else "contiguous"
        print(f"| {shape} | {layout} | {eb:.2f} | {fb:.2f} | {eb / fb:.2f}x | {ef:.2f} | {ff:.2f} | {ef / ff:.2f}x |")


if __name__ == "__main__":
    main()
