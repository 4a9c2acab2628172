"""More than 2^31 elements: every offset in the kernels is int64. bfloat16 forward (statistics,
running statistics, output) and backward (both passes) against a reference computed a chunk at a
time (float32 values, float64 sums).

Opt-in: PYFUSEDBN_HUGE_TESTS=1 (each tensor is 4 GiB; CI runs this alone as its last step), and
skipped with the reason when the machine (or GPU) has too little free memory.
"""
import os

import pytest
import torch

from helpers import TOLERANCE
from pyfusedbn._ops import ops

pytestmark = pytest.mark.skipif(os.environ.get("PYFUSEDBN_HUGE_TESTS") != "1",
                                reason="opt-in: set PYFUSEDBN_HUGE_TESTS=1 (needs ~14 GiB free)")

# Just over 2^31 elements (4 GiB of bfloat16): a flat offset past int32 in every channel's last
# samples.
SHAPE = (4, 4, 8200, 16376)
assert SHAPE[0] * SHAPE[1] * SHAPE[2] * SHAPE[3] > 2 ** 31
DTYPE = torch.bfloat16
ACTIVATION, PARAM = "leaky_relu", 0.1
# Reference chunk: ROWS x W values of one (n, c) plane, in float32 (1 MB: its temporaries stay in
# cache), each chunk's sums taken in float64. The float32 values carry ~1e-7 relative error, far
# under the bfloat16 outputs' tolerance and, summed in float64, the statistics' float32 one. The
# float64 reference at 128 rows (16.8 MB chunks) spent ~80 s a layout in its arithmetic (cProfile,
# 2 cores); larger chunks were worse (at 512 rows every temporary was a fresh mmap).
ROWS = 16
TENSORS = 3  # x, grad_out, grad_input alive at once (the output is checked, then freed)
MARGIN_BYTES = 2 * 2 ** 30

FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
DEVICES = ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])]


def needed_bytes():
    numel = SHAPE[0] * SHAPE[1] * SHAPE[2] * SHAPE[3]
    return TENSORS * numel * torch.finfo(DTYPE).bits // 8 + MARGIN_BYTES


def available_bytes(device):
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def chunks():
    """(n, c, row slice): every value once, a cache-sized chunk at a time."""
    n_count, c_count, height, _ = SHAPE
    for n in range(n_count):
        for c in range(c_count):
            for h0 in range(0, height, ROWS):
                yield n, c, slice(h0, min(height, h0 + ROWS))


# The elementwise outputs are checked on a sample of chunks (the sums above them see every
# value): every chunk holding a flat offset past LATE_OFFSET (where int32 offsets wrap), each
# (n, c) plane's first and last chunk, and every SAMPLE_EVERY-th chunk. Elementwise precision is
# tested at small sizes elsewhere; what this test adds is the offsets.
LATE_OFFSET = 2 ** 31 - 2 ** 24
SAMPLE_EVERY = 8


def checked_chunks(t):
    """The chunks of chunks() whose elementwise values the test compares, for t's strides."""
    height, width = SHAPE[2], SHAPE[3]
    for i, (n, c, rows) in enumerate(chunks()):
        last_offset = n * t.stride(0) + c * t.stride(1) + (rows.stop - 1) * t.stride(2) + (width - 1) * t.stride(3)
        edge = rows.start == 0 or rows.stop == height
        if last_offset >= LATE_OFFSET or edge or i % SAMPLE_EVERY == 0:
            yield n, c, rows


def random_fill(shape, memory_format, device, seed):
    t = torch.empty(shape, dtype=DTYPE, device=device, memory_format=memory_format)
    g = torch.Generator(device=device).manual_seed(seed)
    for n in range(shape[0]):
        for c in range(shape[1]):
            # Uniform on [-3, 4) (mean 0.5, std ~2), drawn in float32 and rounded to bfloat16: per
            # 2^27 values (2 cores), normal_ took 1.1-1.3 s in either dtype, float32 uniform_ 0.5 s.
            t[n, c].copy_(torch.empty(t[n, c].shape, device=device).uniform_(-3.0, 4.0, generator=g))
    return t


# Value and slope apart: each loop needs one of them, and over 2^31 values the other
# (a torch.where and a multiply per chunk) cost ~15 s a layout on 2 cores (cProfile).
def leaky_relu(z):
    return torch.where(z > 0, z, PARAM * z)


def leaky_relu_slope(z):
    return torch.where(z > 0, 1.0, PARAM)


@pytest.mark.parametrize("memory_format", FORMATS.values(), ids=FORMATS.keys())
@pytest.mark.parametrize("device", DEVICES)
def test_more_than_2_31_elements(device, memory_format):
    if available_bytes(device) < needed_bytes():
        pytest.skip(f"needs {needed_bytes() / 2 ** 30:.1f} GiB free on {device}, "
                    f"{available_bytes(device) / 2 ** 30:.1f} GiB available")
    channels = SHAPE[1]
    count = SHAPE[0] * SHAPE[2] * SHAPE[3]
    x = random_fill(SHAPE, memory_format, device, seed=0)
    weight = torch.linspace(0.5, 1.5, channels, device=device)
    bias = torch.linspace(-0.2, 0.3, channels, device=device)
    running_mean, running_var = torch.zeros(channels, device=device), torch.ones(channels, device=device)

    # float64 statistics, one chunk at a time (shifted by a rough mean: no cancellation).
    sums = torch.zeros(channels, 2, dtype=torch.float64)
    for n, c, rows in chunks():
        v = x[n, c, rows].float().cpu() - 0.5
        sums[c, 0] += v.sum(dtype=torch.float64)
        sums[c, 1] += (v * v).sum(dtype=torch.float64)
    mean = sums[:, 0] / count + 0.5
    var = sums[:, 1] / count - (mean - 0.5) ** 2
    invstd = (var + 1e-5).rsqrt()
    scale = weight.double().cpu() * invstd
    shift = bias.double().cpu() - mean * scale

    out, save_mean, save_invstd = ops.batch_norm_act_train(
        x, weight, bias, None, running_mean, running_var, 0.1, 1e-5, ACTIVATION, PARAM)
    assert out.is_contiguous(memory_format=memory_format)
    tol = TOLERANCE[torch.float32]
    assert (save_mean.double().cpu() - mean).abs().max() <= tol * max(1.0, mean.abs().max())
    assert (save_invstd.double().cpu() - invstd).abs().max() <= tol * invstd.max()
    expected_rv = 0.9 + 0.1 * var * count / (count - 1)
    assert (running_var.double().cpu() - expected_rv).abs().max() <= tol
    assert (running_mean.double().cpu() - 0.1 * mean).abs().max() <= tol
    worst, magnitude = 0.0, 1.0
    for n, c, rows in checked_chunks(x):
        expected = leaky_relu(x[n, c, rows].float().cpu() * scale[c] + shift[c])
        worst = max(worst, (out[n, c, rows].float().cpu() - expected).abs().max().item())
        magnitude = max(magnitude, expected.abs().max().item())
    del out
    assert worst <= TOLERANCE[DTYPE] * magnitude, f"output: max |diff| {worst:.3e} (scale {magnitude:.3g})"

    grad_out = random_fill(SHAPE, memory_format, device, seed=1)
    sum_g, sum_g_xhat = ops.batch_norm_act_backward_reduce(
        grad_out, x, save_mean, save_invstd, weight, bias, None, ACTIVATION, PARAM)
    sums = torch.zeros(channels, 3, dtype=torch.float64)
    for n, c, rows in chunks():
        xhat = (x[n, c, rows].float().cpu() - mean[c]) * invstd[c]
        slope = leaky_relu_slope(xhat * weight[c].item() + bias[c].item())
        g = grad_out[n, c, rows].float().cpu() * slope
        sums[c, 0] += g.sum(dtype=torch.float64)
        sums[c, 1] += (g * xhat).sum(dtype=torch.float64)
        sums[c, 2] += (g.abs() * (1 + xhat.abs())).sum(dtype=torch.float64)
    for name, got, want in (("sum_g", sum_g, sums[:, 0]), ("sum_g_xhat", sum_g_xhat, sums[:, 1])):
        error = (got.double().cpu() - want).abs()
        # Relative to the sum of magnitudes: float32 block partials over 2^29 values per channel
        # (10x float32's tolerance: precision is tested elsewhere). The inputs' mean of 0.5 keeps
        # the sums ~1e8, so an offset that wrapped (a plane missed or read twice) is far off.
        limit = 10 * TOLERANCE[torch.float32] * sums[:, 2]
        assert (error <= limit).all(), f"{name}: error {error.tolist()} > {limit.tolist()}"
    mean_g, mean_g_xhat = sums[:, 0] / count, sums[:, 1] / count
    grad_input, _ = ops.batch_norm_act_backward_elemt(
        grad_out, x, save_mean, save_invstd, weight, bias, None, mean_g.float().to(device),
        mean_g_xhat.float().to(device), ACTIVATION, PARAM)
    worst, magnitude = 0.0, 1.0
    for n, c, rows in checked_chunks(x):
        xhat = (x[n, c, rows].float().cpu() - mean[c]) * invstd[c]
        slope = leaky_relu_slope(xhat * weight[c].item() + bias[c].item())
        g = grad_out[n, c, rows].float().cpu() * slope
        expected = scale[c] * (g - mean_g[c] - xhat * mean_g_xhat[c])
        worst = max(worst, (grad_input[n, c, rows].float().cpu() - expected).abs().max().item())
        magnitude = max(magnitude, expected.abs().max().item())
    assert worst <= TOLERANCE[DTYPE] * magnitude, f"grad input: max |diff| {worst:.3e} (scale {magnitude:.3g})"
