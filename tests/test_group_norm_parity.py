"""group_norm_act against torch's F.group_norm + residual + activation in float64: outputs and
the input, weight, bias and residual gradients, every activation, dtype, rank and layout."""
import pytest
import torch

import pyfusedbn
from pyfusedbn._ops import ops
from group_norm_cases import CASE_IDS, EPS, GROUP_CASES, check_against_float64, reference_group_norm_act
from helpers import DTYPES, TOLERANCE, assert_close


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", GROUP_CASES, ids=CASE_IDS)
def test_dtypes_and_layouts(case, dtype, generator, poison_empty):
    check_against_float64(case, dtype, "silu", generator)


@pytest.mark.parametrize("activation", pyfusedbn.ACTIVATION_NAMES)
@pytest.mark.parametrize("case", [GROUP_CASES[2], GROUP_CASES[3], GROUP_CASES[0]], ids=["nchw", "nhwc", "2d"])
def test_every_activation(case, activation, generator, poison_empty):
    check_against_float64(case, torch.float32, activation, generator)


# The CPU backward walks part by part (csrc/cpu/group_norm_fused.h) for channels_last, and for NCHW
# with 16-bit or float32 input: there both of its branches (g kept for an exp-based derivative,
# recomputed for a cheap one) with and without a residual, a batch of one and samples split inside.
# NCHW float32 and bfloat16 (on AVX-512) take the plane kernels (csrc/cpu/group_norm_planes.h):
# planes of a whole number of vectors (16x16), with a tail (9x7, 40x33), over one reduction block
# (50x50 > 2048 values).
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("case", [("nchw", (3, 8, 9, 7), torch.contiguous_format, 4),
                                  ("nchw_batch1", (1, 6, 40, 33), torch.contiguous_format, 2),
                                  ("nchw_16x16", (2, 12, 16, 16), torch.contiguous_format, 3),
                                  ("nchw_long_plane", (2, 4, 50, 50), torch.contiguous_format, 2),
                                  ("nhwc_large", (2, 64, 40, 32), torch.channels_last, 8)],
                         ids=["nchw", "nchw_batch1", "nchw_16x16", "nchw_long_plane", "nhwc_large"])
def test_backward_walk(case, dtype, activation, residual, generator, poison_empty):
    check_against_float64(case, dtype, activation, generator, residual=residual)


# The saved statistics, which the backward rebuilds from, against float64 (nothing else compares
# them directly): NCHW groups are one contiguous run, channels_last ones merge per-(n, c) sums.
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape, groups", [((3, 8, 9, 7), 4), ((1, 6, 40, 33), 2), ((2, 12, 16, 16), 3),
                                           ((2, 4, 50, 50), 2), ((1, 3, 5, 5), 1)],
                         ids=["9x7", "batch1", "16x16", "long_plane", "one_group"])
def test_saved_statistics(shape, groups, dtype, memory_format, generator, poison_empty):
    x = (torch.randn(shape, generator=generator, dtype=torch.float64) * 3 + 2).to(dtype)
    x = x.contiguous(memory_format=memory_format)
    out, mean, rstd = ops.group_norm_act(x, None, None, None, groups, EPS, "silu", 0.0)
    var, want_mean = torch.var_mean(x.double().reshape(shape[0], groups, -1), dim=2, unbiased=False)
    tol = 1e-9 if dtype == torch.float64 else 1e-5  # the statistics accumulate in float32 or float64
    assert_close("mean", mean, want_mean, tol)
    assert_close("rstd", rstd, torch.rsqrt(var + EPS), tol)
    ref = reference_group_norm_act(x.double(), groups, None, None, EPS, "silu", None)
    assert_close("output", out, ref, TOLERANCE[dtype])


# The CPU backward keeps g = dy * act'(z) between its passes in a buffer of at most 64 MiB
# (csrc/cpu/grad_cache.h); above that it recomputes the derivative: 17M float32 elements do.
@pytest.mark.slow
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_beyond_the_gradient_cache(memory_format, generator):
    check_against_float64(("big", (1, 64, 512, 520), memory_format, 8), torch.float32, "silu", generator,
                          residual=False)


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("case", [GROUP_CASES[2], GROUP_CASES[3]], ids=["nchw", "nhwc"])
def test_without_affine(case, residual, generator):
    check_against_float64(case, torch.float64, "gelu", generator, affine=False, residual=residual)


def test_large_mean_keeps_variance(generator):
    """A mean of 1e4 over a spread of 1: float32 sums of raw values would lose the variance."""
    x = torch.randn(2, 8, 40, 40, generator=generator, dtype=torch.float64) + 1e4
    for fmt in (torch.contiguous_format, torch.channels_last):
        out = pyfusedbn.group_norm_act(x.float().contiguous(memory_format=fmt), 4, activation="identity")
        ref = torch.nn.functional.group_norm(x.float().double(), 4)
        assert_close(f"output {fmt}", out, ref, 1e-3)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_nan_in_nan_out(memory_format):
    x = torch.randn(2, 4, 3, 3).contiguous(memory_format=memory_format)
    x[1, 2, 1, 1] = float("nan")
    out = pyfusedbn.group_norm_act(x, 2, activation="relu")
    ref = reference_group_norm_act(x, 2, None, None, EPS, "relu", None)
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    assert torch.isnan(out[1, 2:]).all() and not torch.isnan(out[1, :2]).any() and not torch.isnan(out[0]).any()


def test_empty_batch():
    x = torch.randn(0, 4, 3, 3, requires_grad=True)
    out = pyfusedbn.group_norm_act(x, 2)
    out.sum().backward()
    assert out.shape == x.shape and x.grad.shape == x.shape


def test_layer_norm_2d_many_rows(generator):
    """LayerNorm2d over (2, 64, 100, 100): 20000 rows of 64 on the rows path (many parts of the
    parameter-gradient sums, row blocks split across threads)."""
    shape = (2, 64, 100, 100)
    x = torch.randn(shape, generator=generator, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    dy = torch.randn(shape, generator=generator, dtype=torch.float64)
    weight = torch.rand(64, generator=generator, dtype=torch.float64) + 0.5
    bias = torch.randn(64, generator=generator, dtype=torch.float64)
    leaves = [t.float().requires_grad_() for t in (x, weight, bias)]
    out = pyfusedbn.layer_norm_act_2d(*leaves, EPS, "silu")
    out.backward(dy.float())
    ref_leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    rows = torch.nn.functional.layer_norm(ref_leaves[0].permute(0, 2, 3, 1), (64,), ref_leaves[1], ref_leaves[2], EPS)
    ref = torch.nn.functional.silu(rows.permute(0, 3, 1, 2))
    ref.backward(dy)
    assert_close("output", out, ref, 1e-5)
    for name, got, want in zip(("grad_input", "grad_weight", "grad_bias"), leaves, ref_leaves):
        assert_close(name, got.grad, want.grad, 1e-5)
