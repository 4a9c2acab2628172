"""Property-based tests (hypothesis) of group_norm_act, instance_norm_act and layer_norm_act_2d
against float64 composites of torch ops (F.group_norm / F.instance_norm / F.layer_norm, residual,
the activation; autograd for the gradients), as tests/test_fuzz.py does
for BatchNorm: random ranks 2-5, group counts and group widths made of 1s and small primes, every
dtype and activation, residual, affine or not, and the layouts the kernels must handle
(contiguous, channels_last, strided and transposed views, a storage offset that misaligns vector
loads, expanded or non-contiguous gradients). CPU always, CUDA where present: odd shapes are
where launch geometry and per-(sample, group) indexing go wrong.

Budget and determinism come from the hypothesis profile (tests/conftest.py).
"""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

import pyfusedbn
from helpers import DTYPES, TOLERANCE, assert_close, near_kink, param_dtype
from pyfusedbn.activations import torch_activation
from test_fuzz import DEVICES, GRAD_LAYOUTS, KINK_MARGIN, DEFAULT_KINK_MARGIN, LAYOUTS, MAX_CANCELLATION, \
    MAX_SLOPE, activations, lay_out

SIZES = (1, 1, 2, 3, 5, 7, 11)
GROUP_COUNTS = (1, 2, 3, 5)
GROUP_WIDTHS = (1, 2, 3, 5, 7)
MAX_NUMEL = 4096
EPS = 1e-5


@st.composite
def shapes(draw):
    """(shape, num_groups): rank 2-5, C = groups * width, at most MAX_NUMEL elements."""
    groups, width = draw(st.sampled_from(GROUP_COUNTS)), draw(st.sampled_from(GROUP_WIDTHS))
    shape = [draw(st.sampled_from(SIZES)), groups * width]
    total = shape[0] * shape[1]
    for _ in range(draw(st.integers(0, 3))):
        size = draw(st.sampled_from([s for s in SIZES if total * s <= MAX_NUMEL]))
        shape.append(size)
        total *= size
    return tuple(shape), groups


@st.composite
def cases(draw):
    shape, groups = draw(shapes())
    activation, param = draw(activations())
    return {
        "shape": shape, "groups": groups, "activation": activation, "param": param,
        "dtype": draw(st.sampled_from(DTYPES)),
        "layout": draw(st.sampled_from(LAYOUTS)),
        "grad_layout": draw(st.sampled_from(GRAD_LAYOUTS)),
        "residual": draw(st.sampled_from((None,) + LAYOUTS)),
        "affine": draw(st.booleans()),
        "offset": draw(st.integers(1, 3)),
        "seed": draw(st.integers(0, 2 ** 31 - 1)),
    }


def per_group(t, groups):
    """(N, C, *) as (N, groups, values of the group)."""
    return t.reshape(t.shape[0], groups, -1)


def cancellation(x, groups):
    """Largest |x| of a group in units of its spread (as test_fuzz.cancellation, per group)."""
    x64 = per_group(x.detach().cpu().double(), groups)
    var = x64.var(dim=2, unbiased=False)
    return (x64.abs().amax(dim=2) * torch.rsqrt(var + EPS)).max().item()


def term_scales(x, residual, weight, bias, groups, dy):
    """Magnitudes of the terms each result sums (test_fuzz.term_scales, with per-group rstd)."""
    n, c = x.shape[:2]
    view = (1, c) + (1,) * (x.dim() - 2)
    xg = per_group(x.detach(), groups)
    var, mean = torch.var_mean(xg, dim=2, unbiased=False, keepdim=True)
    rstd = torch.rsqrt(var + EPS)
    x_hat = ((xg - mean) * rstd).reshape(x.shape).abs()
    rstd_nc = rstd.expand(n, groups, c // groups).reshape((n, c) + (1,) * (x.dim() - 2))
    w = weight.detach().abs() if weight is not None else torch.ones(c, dtype=torch.float64)
    b = bias.detach().abs() if bias is not None else torch.zeros(c, dtype=torch.float64)
    g = dy.abs() * MAX_SLOPE
    pre = x_hat * w.reshape(view) + b.reshape(view) + (residual.detach().abs() if residual is not None else 0)
    dims = [0] + list(range(2, x.dim()))
    return {
        "output": MAX_SLOPE * pre.max().item(),
        "grad input": 3 * (w.reshape(view) * rstd_nc).max().item() * g.max().item(),
        "grad weight": (g * x_hat).sum(dim=dims).max().item() if x.numel() else 0.0,
        "grad bias": g.sum(dim=dims).max().item() if x.numel() else 0.0,
    }


def make_inputs(case, device, running=False):
    """weight and bias (None unless affine), running mean and var (None unless running), x,
    residual (None unless the case has one) and dy, drawn in that order from the case's seed."""
    shape, dtype = case["shape"], case["dtype"]
    g = torch.Generator().manual_seed(case["seed"])
    channels, pdtype = shape[1], param_dtype(dtype)

    def values(mean=0.0):
        return (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + mean).to(dtype).to(device)

    def per_channel(draw, scale, offset):
        return (draw(channels, generator=g, dtype=torch.float64) * scale + offset).to(pdtype).to(device)

    weight = bias = running_mean = running_var = None
    if case["affine"]:
        weight = per_channel(torch.rand, 1.5, 0.25).requires_grad_()
        bias = per_channel(torch.randn, 1.0, 0.0).requires_grad_()
    if running:
        running_mean, running_var = per_channel(torch.randn, 1.0, 0.0), per_channel(torch.rand, 1.0, 0.25)
    x = lay_out(values(mean=1.0), case["layout"], case["offset"]).requires_grad_()
    residual = None
    if case["residual"] is not None:
        residual = lay_out(values(), case["residual"], case["offset"]).requires_grad_()
    dy = lay_out(values(), case["grad_layout"], case["offset"])
    return weight, bias, running_mean, running_var, x, residual, dy


def leaf64(t):
    return None if t is None else t.detach().cpu().double().requires_grad_()


def assert_gradients(where, tol, scale, near, set_near, ours, references):
    """Gradients of (x, residual, weight, bias) against the float64 references'. Which side of a
    kink an element takes is a matter of rounding: a set of values one statistic is over (set_near:
    a group, an instance, a position) with an element there is left out of grad input, since its
    every element reads the set's sums; a channel with one, out of the parameter gradients."""
    x, residual, weight, bias = ours
    x64, res64, w64, b64 = references
    keep = ~set_near
    assert_close(f"{where}: grad input", x.grad.cpu()[keep], x64.grad[keep], tol, scale["grad input"])
    if residual is not None:
        assert_close(f"{where}: grad residual", residual.grad.cpu()[~near], res64.grad[~near], tol)
    if weight is not None:
        channel_keep = ~near.transpose(0, 1).reshape(x.shape[1], -1).any(dim=1)
        assert_close(f"{where}: grad weight", weight.grad.cpu()[channel_keep], w64.grad[channel_keep], tol,
                     scale["grad weight"])
        assert_close(f"{where}: grad bias", bias.grad.cpu()[channel_keep], b64.grad[channel_keep], tol,
                     scale["grad bias"])


def check(case, device):
    shape, groups, dtype = case["shape"], case["groups"], case["dtype"]
    weight, bias, _, _, x, residual, dy = make_inputs(case, device)
    if dtype == torch.float32:
        assume(cancellation(x, groups) <= MAX_CANCELLATION)
    where = f"{case}"

    call = lambda: pyfusedbn.group_norm_act(x, groups, weight, bias, EPS, case["activation"], case["param"], residual)
    if x.numel() // groups == 1:  # one sample of one-value groups: F.group_norm refuses it, so must we
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            call()
        return
    y = call()
    y.backward(dy)

    x64, res64, w64, b64 = leaf64(x), leaf64(residual), leaf64(weight), leaf64(bias)
    z64 = F.group_norm(x64, groups, w64, b64, EPS)
    if res64 is not None:
        z64 = z64 + res64
    y64 = torch_activation(case["activation"], case["param"])(z64)
    y64.backward(dy.cpu().double())
    scale = term_scales(x64, res64, w64, b64, groups, dy.cpu().double())

    tol = TOLERANCE[dtype]
    assert y.dtype == dtype and y.shape == x.shape, where
    assert_close(f"{where}: output", y, y64, tol, scale["output"])
    near = near_kink(case["activation"], z64.detach(), KINK_MARGIN.get(dtype, DEFAULT_KINK_MARGIN))
    group_near = per_group(near, groups).any(dim=2, keepdim=True).expand(shape[0], groups, near[0].numel() // groups)
    assert_gradients(where, tol, scale, near, group_near.reshape(shape), (x, residual, weight, bias),
                     (x64, res64, w64, b64))


@pytest.mark.parametrize("device", DEVICES)
@given(case=cases())
def test_matches_float64_composite(device, case):
    check(case, device)


@st.composite
def instance_and_layer_cases(draw):
    """instance_norm_act (rank 3-5, running statistics or not) and layer_norm_act_2d (rank 4)."""
    norm = draw(st.sampled_from(("instance", "layer2d")))
    rank = 4 if norm == "layer2d" else draw(st.integers(3, 5))
    shape = [draw(st.sampled_from(SIZES)), draw(st.sampled_from((1, 2, 3, 5, 7, 13)))]
    total = shape[0] * shape[1]
    for _ in range(rank - 2):
        size = draw(st.sampled_from([s for s in SIZES if total * s <= MAX_NUMEL]))
        shape.append(size)
        total *= size
    if norm == "instance" and total // (shape[0] * shape[1]) == 1:
        shape[-1] = 2  # F.instance_norm needs more than one value per instance
    case = draw(cases())
    case.update(norm=norm, shape=tuple(shape), groups=None, running=draw(st.booleans()),
                momentum=draw(st.sampled_from((0.1, 0.7))))
    return case


def reference_instance_or_layer(case, x, weight, bias, running_mean, running_var):
    if case["norm"] == "instance":
        return F.instance_norm(x, running_mean, running_var, weight, bias, True, case["momentum"], EPS)
    rows = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), weight, bias, EPS)
    return rows.permute(0, 3, 1, 2)


def check_instance_or_layer(case, device):
    shape, dtype, norm = case["shape"], case["dtype"], case["norm"]
    channels, pdtype = shape[1], param_dtype(dtype)
    weight, bias, running_mean, running_var, x, residual, dy = make_inputs(
        case, device, running=norm == "instance" and case["running"])
    # The values each statistic is over, as the last dimension.
    sets = (lambda t: t.flatten(2)) if norm == "instance" else (lambda t: t.movedim(1, -1))
    if dtype == torch.float32:
        x64 = sets(x.detach().cpu().double())
        spread = torch.rsqrt(x64.var(dim=-1, unbiased=False) + EPS)
        assume((x64.abs().amax(dim=-1) * spread).max().item() <= MAX_CANCELLATION)
    stats64 = [None if t is None else t.detach().cpu().double() for t in (running_mean, running_var)]
    where = f"{case}"

    if norm == "instance":
        y = pyfusedbn.instance_norm_act(x, running_mean, running_var, weight, bias, True, case["momentum"], EPS,
                                        case["activation"], case["param"], residual)
    else:
        y = pyfusedbn.layer_norm_act_2d(x, weight, bias, EPS, case["activation"], case["param"], residual)
    y.backward(dy)

    x64, res64, w64, b64 = leaf64(x), leaf64(residual), leaf64(weight), leaf64(bias)
    z64 = reference_instance_or_layer(case, x64, w64, b64, *stats64)
    if res64 is not None:
        z64 = z64 + res64
    y64 = torch_activation(case["activation"], case["param"])(z64)
    # Contiguous: torch 2.13's F.instance_norm backward on the CPU returns wrong input gradients
    # for a channels_last gradient whose strides are ambiguous (H == 1: (1, 2, 1, 3), strides
    # (6, 1, 6, 2)), F.group_norm's do not; the values are the same either way.
    y64.backward(dy.cpu().double().contiguous())
    if norm == "instance":
        scale = term_scales(x64, res64, w64, b64, channels, dy.cpu().double())
    else:  # rows of C values: one group of C channels per position
        rows = lambda t: None if t is None else t.detach().movedim(1, -1).reshape(-1, channels)
        scale = term_scales(rows(x64), rows(res64), w64, b64, 1, rows(dy.cpu().double()))

    tol = TOLERANCE[dtype]
    assert y.dtype == dtype and y.shape == x.shape, where
    assert_close(f"{where}: output", y, y64, tol, scale["output"])
    if running_mean is not None:
        stats_tol = TOLERANCE[pdtype]
        assert_close(f"{where}: running_mean", running_mean, stats64[0], stats_tol)
        assert_close(f"{where}: running_var", running_var, stats64[1], stats_tol)
    near = near_kink(case["activation"], z64.detach(), KINK_MARGIN.get(dtype, DEFAULT_KINK_MARGIN))
    if norm == "instance":
        set_near = near.flatten(2).any(dim=2).reshape(shape[:2] + (1,) * (len(shape) - 2)).expand(shape)
    else:
        set_near = near.any(dim=1, keepdim=True).expand(shape)
    assert_gradients(where, tol, scale, near, set_near, (x, residual, weight, bias), (x64, res64, w64, b64))


@pytest.mark.parametrize("device", DEVICES)
@given(case=instance_and_layer_cases())
def test_instance_and_layer_norm_match_float64_composite(device, case):
    check_instance_or_layer(case, device)
