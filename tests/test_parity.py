"""Parity with torch.nn.functional.batch_norm + activation (float64 reference) and with the
nn.BatchNorm*d modules: outputs, gradients, running statistics, num_batches_tracked, eval mode,
several steps in a row."""
import pytest
import torch
import torch.nn as nn

import pyfusedbn
from helpers import (DTYPES, LAYOUTS, TOLERANCE, assert_close, param_dtype, random_input,
                     reference_batch_norm_act)

MODULES = {2: pyfusedbn.BatchNormAct1d, 3: pyfusedbn.BatchNormAct1d, 4: pyfusedbn.BatchNormAct2d,
           5: pyfusedbn.BatchNormAct3d}
TORCH_MODULES = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
# A non-default parameter where the activation has one, to prove it reaches the kernel.
PARAMS = {"leaky_relu": 0.2, "elu": 0.7, "softplus": 1.5}


def make_module(rank, channels, dtype, generator, device="cpu", **kwargs):
    module = MODULES[rank](channels, dtype=param_dtype(dtype), **kwargs)
    with torch.no_grad():
        if module.affine:
            module.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.bias.copy_(torch.randn(channels, generator=generator) * 0.5)
        if module.track_running_stats:
            module.running_mean.copy_(torch.randn(channels, generator=generator))
            module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
    return module.to(device)


def reference_step(module_state, x, residual, dy, training, momentum, eps, activation, param):
    """One float64 reference step on the CPU; returns output, grads and updated running stats."""
    x64 = x.detach().cpu().double().requires_grad_()
    res64 = residual.detach().cpu().double().requires_grad_() if residual is not None else None
    weight, bias, running_mean, running_var = (
        t.detach().cpu().double().clone() if t is not None else None for t in module_state)
    if weight is not None:
        weight.requires_grad_()
        bias.requires_grad_()
    y = reference_batch_norm_act(x64, running_mean, running_var, weight, bias, training, momentum,
                                 eps, activation, param, res64)
    y.backward(dy.cpu().double())
    grads = {"input": x64.grad, "residual": res64.grad if res64 is not None else None,
             "weight": weight.grad if weight is not None else None,
             "bias": bias.grad if bias is not None else None}
    return y, grads, running_mean, running_var


def run_steps(module, rank, shape, memory_format, dtype, activation, param, residual, generator,
              training_steps=2, device="cpu"):
    """Training steps then one eval step, each compared with the float64 reference."""
    tol = TOLERANCE[dtype]
    stats_tol = TOLERANCE[param_dtype(dtype)]
    for step in range(training_steps + 1):
        training = step < training_steps
        module.train(training)
        x = random_input(shape, dtype, memory_format, generator).to(device).requires_grad_()
        res = random_input(shape, dtype, memory_format, generator, mean=0.0, scale=1.0).to(device) \
            .requires_grad_() if residual else None
        bn_training = training or not module.track_running_stats
        use_running = not training or module.track_running_stats
        momentum = module.momentum
        if training and module.track_running_stats and momentum is None:
            momentum = 1.0 / float(module.num_batches_tracked + 1)
        # Snapshot before the forward: the module updates its buffers in place.
        state = tuple(t.detach().clone() if t is not None else None for t in (
            module.weight, module.bias, module.running_mean if use_running else None,
            module.running_var if use_running else None))
        tracked_before = int(module.num_batches_tracked) if module.track_running_stats else None

        y = module(x, res)
        dy = torch.randn(y.shape, generator=generator, dtype=torch.float64).to(dtype).to(device)
        y_ref, grads_ref, rm_ref, rv_ref = reference_step(
            state, x, res, dy, bn_training, momentum if momentum is not None else 0.0,
            module.eps, activation, param)
        for t in (module.weight, module.bias):
            if t is not None:
                t.grad = None
        y.backward(dy)

        where = f"step {step} ({'train' if training else 'eval'})"
        assert y.dtype == dtype, f"{where}: output dtype {y.dtype}"
        assert y.is_contiguous(memory_format=memory_format), f"{where}: output memory format"
        assert_close(f"{where} output", y, y_ref, tol)
        assert_close(f"{where} grad input", x.grad, grads_ref["input"], tol)
        if residual:
            assert_close(f"{where} grad residual", res.grad, grads_ref["residual"], tol)
        if module.affine:
            assert_close(f"{where} grad weight", module.weight.grad, grads_ref["weight"], tol)
            assert_close(f"{where} grad bias", module.bias.grad, grads_ref["bias"], tol)
        if module.track_running_stats:
            assert_close(f"{where} running_mean", module.running_mean, rm_ref, stats_tol)
            assert_close(f"{where} running_var", module.running_var, rv_ref, stats_tol)
            expected = tracked_before + (1 if training else 0)
            assert int(module.num_batches_tracked) == expected, f"{where}: num_batches_tracked"


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("activation", pyfusedbn.ACTIVATION_NAMES)
def test_every_activation_layout_dtype(activation, layout, dtype, residual, generator, poison_empty):
    shape, memory_format = LAYOUTS[layout]
    rank = len(shape)
    param = PARAMS.get(activation)
    module = make_module(rank, shape[1], dtype, generator, activation=activation,
                         activation_param=param)
    run_steps(module, rank, shape, memory_format, dtype, activation, param, residual, generator)


# How the CPU kernels walk channels_last input (csrc/cpu/chunks.h, RowTiles): a tensor of up to
# 4 MiB is swept 4 rows at once, in tiles of up to 256 channels, leaving rows and channels over;
# a larger one, and float32 whose rows lie a multiple of 4 KiB apart, one row at a time, in
# pieces of up to 1024 channels (float16 converted through buffers: tiles of up to 256 elements,
# kStreamChunk). On AVX2 + F16C machines float16 is converted in registers instead, 8 channels a
# block (convert.h, kConvertsInRegisters), a row's last (C % 8) with a run-time length.
# The reductions read rows of up to 2048 channels (kBlock) in place; wider ones are gathered in
# column blocks (reduction_kernels.h, gather_buffer).
# Each walk against the float64 reference, with the recomputed derivative (relu) and the cached
# one (silu).
CHANNELS_LAST_WALKS = {
    "swept_column_tiles": ((3, 300, 5, 3), torch.float32),  # 45 rows, 256 + 44 channels
    "swept_narrow_rows": ((3, 20, 5, 3), torch.bfloat16),   # one tile of 45 rows
    "swept_float16": ((2, 600, 3, 5), torch.float16),       # 30 rows, 256 + 256 + 88 channels
    "swept_float16_blocks": ((3, 37, 5, 3), torch.float16),  # 45 rows of 4 x 8 + 5 channels
    "aliased_rows": ((2, 1024, 3, 3), torch.float32),       # 4 KiB rows
    "streamed_pieces": ((2, 1100, 24, 24), torch.float32),  # 5 MB, 1024 + 76 channels
    "streamed_float16": ((2, 1100, 31, 31), torch.float16),  # 4.2 MB, 4 x 256 + 76 channels
    "streamed_float16_narrow": ((2, 100, 110, 110), torch.float16),  # 4.8 MB, 2 rows of 100
    "gathered_wide_rows": ((2, 2100, 3, 3), torch.bfloat16),  # reductions: 2048 + 52 channels a block
}


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("walk", list(CHANNELS_LAST_WALKS))
def test_channels_last_walks(walk, activation, residual, generator, poison_empty):
    shape, dtype = CHANNELS_LAST_WALKS[walk]
    module = make_module(4, shape[1], dtype, generator, activation=activation)
    run_steps(module, 4, shape, torch.channels_last, dtype, activation, None, residual, generator,
              training_steps=1)


# float16 NCHW planes: a streamed tensor's (over 4 MiB) are cut into pieces of 256 elements
# where they are converted through buffers (kStreamChunk), of 1024 where they are converted in
# registers (AVX2 + F16C); planes of 256 elements or more are converted in registers 8 at a time,
# the last (plane % 8) as a zero-padded block (elementwise_kernels.h, kPlanarRegisterCols).
FLOAT16_PLANES = {
    "streamed": (2, 20, 230, 230),  # 230x230: 206 x 256 + 164, or 51 x 1024 + 676 (84 x 8 + 4)
    "register_blocks": (3, 6, 17, 19),  # 323 = 40 x 8 + 3
    "bulk": (3, 6, 15, 15),  # 225 < 256
}


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("planes", list(FLOAT16_PLANES))
def test_float16_planes(planes, activation, residual, generator, poison_empty):
    shape = FLOAT16_PLANES[planes]
    module = make_module(4, shape[1], torch.float16, generator, activation=activation)
    run_steps(module, 4, shape, torch.contiguous_format, torch.float16, activation, None, residual, generator,
              training_steps=1)


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
@pytest.mark.parametrize("track_running_stats", [True, False], ids=["tracked", "untracked"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("activation", ["relu", "silu", "leaky_relu", "gelu_tanh"])
def test_module_options(activation, residual, affine, track_running_stats, momentum, generator,
                        poison_empty):
    shape, memory_format = LAYOUTS["4d_channels_last" if residual else "4d"]
    module = make_module(4, shape[1], torch.float64, generator, activation=activation,
                         affine=affine, track_running_stats=track_running_stats, momentum=momentum)
    run_steps(module, 4, shape, memory_format, torch.float64, activation, None, residual,
              generator, training_steps=3)


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
def test_matches_torch_module_over_steps(rank, generator):
    """Swap-in parity with nn.BatchNorm*d + nn.ReLU, float32, state_dict shared, five steps."""
    shape = {2: (16, 8), 3: (4, 8, 9), 4: (4, 8, 5, 6), 5: (2, 8, 3, 4, 5)}[rank]
    ours = make_module(rank, 8, torch.float32, generator)
    theirs = TORCH_MODULES[rank](8)
    theirs.load_state_dict(ours.state_dict())
    for step in range(6):
        training = step < 5
        ours.train(training)
        theirs.train(training)
        x = random_input(shape, torch.float32, generator=generator)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = ours(x1), torch.relu(theirs(x2))
        dy = torch.randn(y1.shape, generator=generator)
        y1.backward(dy)
        y2.backward(dy)
        assert_close(f"step {step} output", y1, y2, TOLERANCE[torch.float32])
        assert_close(f"step {step} grad input", x1.grad, x2.grad, TOLERANCE[torch.float32])
    for key, value in theirs.state_dict().items():
        assert_close(f"state_dict[{key}]", ours.state_dict()[key].double(), value.double(),
                     TOLERANCE[torch.float32])
    assert_close("grad weight", ours.weight.grad, theirs.weight.grad, TOLERANCE[torch.float32])
    assert_close("grad bias", ours.bias.grad, theirs.bias.grad, TOLERANCE[torch.float32])


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_functional_training_with_given_running_stats(activation, generator):
    """training=True with running statistics: batch statistics used, running stats updated."""
    x = random_input((6, 4, 3, 3), torch.float64, generator=generator)
    rm, rv = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    rm_ref, rv_ref = rm.clone(), rv.clone()
    y = pyfusedbn.batch_norm_act(x, rm, rv, training=True, momentum=0.3, activation=activation)
    y_ref = reference_batch_norm_act(x, rm_ref, rv_ref, None, None, True, 0.3, 1e-5, activation, None)
    assert_close("output", y, y_ref, TOLERANCE[torch.float64])
    assert_close("running_mean", rm, rm_ref, TOLERANCE[torch.float64])
    assert_close("running_var", rv, rv_ref, TOLERANCE[torch.float64])
