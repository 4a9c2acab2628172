"""memory_efficient=True (backward from the output) and inplace=True: the same numbers as the
normal mode and as nn.BatchNorm2d + activation, the input provably not saved, the refusals, the
weight clamp, the aliasing of inplace."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pyfusedbn
from helpers import TOLERANCE, assert_close, random_input
from pyfusedbn._ops import ops
from pyfusedbn.activations import torch_activation
from pyfusedbn.memory_efficient import INVERTIBLE_ACTIVATIONS, MIN_WEIGHT, clamp_weight
from pyfusedbn.testing import SavedTensors

# Every invertible activation, and a second parameter where it has one.
CASES = [("identity", None), ("leaky_relu", 0.01), ("leaky_relu", 0.2), ("elu", 1.0),
         ("elu", 0.5)]
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
SHAPE = (4, 6, 5, 7)


def make_pair(dtype, generator, activation, param, **kwargs):
    """A normal and a memory-efficient module with the same (random, one negative) state."""
    channels = SHAPE[1]
    normal = pyfusedbn.BatchNormAct2d(channels, activation=activation, activation_param=param,
                                      dtype=dtype, **kwargs)
    with torch.no_grad():
        if normal.affine:
            normal.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
            normal.weight[1] *= -1
        if normal.bias is not None:
            normal.bias.copy_(torch.randn(channels, generator=generator) * 0.5)
        if normal.track_running_stats:
            normal.running_mean.copy_(torch.randn(channels, generator=generator))
            normal.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
    efficient = pyfusedbn.BatchNormAct2d(channels, activation=activation, activation_param=param,
                                         dtype=dtype, memory_efficient=True, **kwargs)
    efficient.load_state_dict(normal.state_dict())
    return normal, efficient


def step(module, x, residual, dy):
    """Forward + backward on fresh leaves; returns the output and every gradient."""
    x = x.detach().clone().requires_grad_()
    residual = residual.detach().clone().requires_grad_() if residual is not None else None
    for p in module.parameters():
        p.grad = None
    y = module(x, residual)
    y.backward(dy)
    grads = {"input": x.grad, "residual": residual.grad if residual is not None else None}
    grads.update({name: p.grad for name, p in module.named_parameters()})
    return y, grads


def torch_step(normal_state, x, residual, dy, training, activation, param):
    """nn.BatchNorm2d + the torch activation, in float64."""
    bn = nn.BatchNorm2d(SHAPE[1], dtype=torch.float64)
    bn.load_state_dict({k: v.double() if v.is_floating_point() else v
                        for k, v in normal_state.items()})
    bn.train(training)
    act = torch_activation(activation, param)
    module = lambda x, r: act(bn(x) + r) if r is not None else act(bn(x))  # noqa: E731
    for p in bn.parameters():
        p.grad = None
    x64 = x.detach().double().requires_grad_()
    r64 = residual.detach().double().requires_grad_() if residual is not None else None
    y = module(x64, r64)
    y.backward(dy.double())
    grads = {"input": x64.grad, "residual": r64.grad if r64 is not None else None,
             "weight": bn.weight.grad, "bias": bn.bias.grad}
    return y, grads, bn


def compare(where, got, expected, tol):
    for name, value in expected.items():
        if value is not None:
            assert_close(f"{where} grad {name}", got[name], value, tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("activation,param", CASES, ids=[f"{a}-{p}" for a, p in CASES])
def test_same_as_normal_mode_and_torch(activation, param, residual, layout, dtype, generator):
    normal, efficient = make_pair(dtype, generator, activation, param)
    tol = TOLERANCE[dtype]  # rebuilding x_hat from y stays within the normal mode's tolerance
    for training in (True, True, False):  # two training steps, then eval with gradients
        normal.train(training)
        efficient.train(training)
        where = "train" if training else "eval"
        x = random_input(SHAPE, dtype, LAYOUTS[layout], generator)
        res = random_input(SHAPE, dtype, LAYOUTS[layout], generator, mean=0.0, scale=1.0) \
            if residual else None
        dy = torch.randn(SHAPE, generator=generator, dtype=torch.float64).to(dtype)
        state = {k: v.clone() for k, v in normal.state_dict().items()}
        y_normal, grads_normal = step(normal, x, res, dy)
        y_eff, grads_eff = step(efficient, x, res, dy)
        y_torch, grads_torch, bn = torch_step(state, x, res, dy, training, activation, param)
        # The forward is the very same op call: bitwise equal outputs and running statistics.
        assert torch.equal(y_eff, y_normal), f"{where}: output differs from the normal mode"
        assert y_eff.is_contiguous(memory_format=LAYOUTS[layout]), f"{where}: memory format"
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(getattr(efficient, name), getattr(normal, name)), f"{where}: {name}"
        compare(f"{where} vs normal mode", grads_eff, grads_normal, tol)
        compare(f"{where} vs nn.BatchNorm2d", grads_eff, grads_torch, tol)
        assert_close(f"{where} output vs nn.BatchNorm2d", y_eff, y_torch, TOLERANCE[dtype])
        assert_close(f"{where} running_var vs nn.BatchNorm2d", efficient.running_var,
                     bn.running_var, TOLERANCE[dtype])


@pytest.mark.parametrize("options", [dict(affine=False), dict(track_running_stats=False),
                                     dict(momentum=None), dict(bias=None)],
                         ids=["no_affine", "untracked", "cumulative", "weight_no_bias"])
def test_module_options(options, generator):
    no_bias = options.pop("bias", False) is None
    normal, efficient = make_pair(torch.float64, generator, "leaky_relu", 0.1, **options)
    if no_bias:  # a weight without bias: the rebuild subtracts a zero bias
        normal.bias = efficient.bias = None
    for training in (True, False):
        normal.train(training)
        efficient.train(training)
        x = random_input(SHAPE, torch.float64, generator=generator)
        dy = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
        y_normal, grads_normal = step(normal, x, None, dy)
        y_eff, grads_eff = step(efficient, x, None, dy)
        assert torch.equal(y_eff, y_normal)
        compare("train" if training else "eval", grads_eff, grads_normal, TOLERANCE[torch.float64])


def test_input_not_saved(generator):
    """saved_tensors_hooks see the input in the normal mode and the output (never the input) in
    the memory-efficient one. Alone the layer saves as much either way; after a consumer that
    saves y anyway (a convolution) the difference is one input-sized buffer per layer."""
    x_leaf = random_input((8, 16, 12, 12), torch.float32, generator=generator).requires_grad_()
    for memory_efficient in (False, True):
        bn = pyfusedbn.BatchNormAct2d(16, activation="leaky_relu", memory_efficient=memory_efficient)
        x = x_leaf * 1.0  # a non-leaf input, as a convolution's output would be
        with SavedTensors() as record:
            y = bn(x)
        assert record.holds(x) != memory_efficient, f"memory_efficient={memory_efficient}: input"
        assert record.holds(y) == memory_efficient, f"memory_efficient={memory_efficient}: output"
        y.sum().backward()

    def net_saved_bytes(memory_efficient, layers=3):
        torch.manual_seed(0)
        net = nn.Sequential(*[m for _ in range(layers) for m in (
            nn.Conv2d(8, 8, 3, padding=1, bias=False),
            pyfusedbn.BatchNormAct2d(8, activation="elu", memory_efficient=memory_efficient))])
        x = torch.randn(4, 8, 10, 10)
        with SavedTensors() as record:
            net(x).sum().backward()
        return record.nbytes
    # The last layer's output is saved by nothing else: layers - 1 buffers saved.
    assert net_saved_bytes(False) - net_saved_bytes(True) == 2 * 4 * 8 * 10 * 10 * 4


@pytest.mark.parametrize("activation,param", [("relu", None), ("silu", None), ("sigmoid", None),
                                              ("leaky_relu", 0.0), ("leaky_relu", -0.1),
                                              ("elu", 0.0)])
def test_refuses_non_invertible(activation, param):
    x = torch.randn(2, 3, 4, 4)
    calls = ops.kernel_calls("cpu")
    with pytest.raises(ValueError, match=f"memory_efficient=True needs .*'{activation}'"):
        pyfusedbn.BatchNormAct2d(3, activation=activation, activation_param=param,
                                 memory_efficient=True)
    with pytest.raises(ValueError, match="identity, leaky_relu"):
        pyfusedbn.batch_norm_act(x, None, None, training=True, activation=activation,
                                 activation_param=param, memory_efficient=True)
    with pytest.raises(ValueError, match="inplace=True needs memory_efficient=True"):
        pyfusedbn.batch_norm_act(x, None, None, training=True, activation="identity", inplace=True)
    assert ops.kernel_calls("cpu") == calls, "a kernel ran before the ValueError"
    assert set(INVERTIBLE_ACTIVATIONS) <= set(pyfusedbn.ACTIVATION_NAMES)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_tiny_weight_clamp(dtype, generator):
    """|weight| < MIN_WEIGHT (zeros included): the layer is the normal one with the clamped
    weight, gradients finite, the weight's gradient that of the clamped weight (straight through)."""
    weight = torch.tensor([0.0, -0.0, 1e-7, -1e-7, 2 * MIN_WEIGHT, -0.8], dtype=dtype)
    bias = torch.tensor([0.3, -0.2, 0.1, 0.0, -0.5, 0.4], dtype=dtype)
    assert torch.equal(clamp_weight(weight), torch.tensor(
        [MIN_WEIGHT, MIN_WEIGHT, MIN_WEIGHT, -MIN_WEIGHT, 2 * MIN_WEIGHT, -0.8], dtype=dtype))
    x = random_input(SHAPE, dtype, generator=generator)
    dy = torch.randn(SHAPE, generator=generator, dtype=torch.float64).to(dtype)
    results = []
    for memory_efficient, w in ((True, weight), (False, clamp_weight(weight))):
        leaves = [t.clone().requires_grad_() for t in (x, w, bias)]
        y = pyfusedbn.batch_norm_act(leaves[0], None, None, leaves[1], leaves[2], training=True,
                                     activation="leaky_relu", memory_efficient=memory_efficient)
        y.backward(dy)
        results.append((y, [t.grad for t in leaves]))
    (y_eff, grads_eff), (y_ref, grads_ref) = results
    assert torch.equal(y_eff, y_ref)
    for name, got, expected in zip(("input", "weight", "bias"), grads_eff, grads_ref):
        assert torch.isfinite(got).all(), f"grad {name} not finite"
        if dtype == torch.float64:  # float32: error ~ eps32 * |bias| / MIN_WEIGHT, finite only
            assert_close(f"grad {name}", got, expected, 1e-8)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_inplace_aliases_input(layout, generator):
    normal, efficient = make_pair(torch.float32, generator, "elu", 1.0)
    efficient.inplace = True
    assert "inplace=True" in repr(efficient) and "memory_efficient=True" in repr(efficient)
    assert "inplace" not in efficient.state_dict()
    x = random_input(SHAPE, torch.float32, LAYOUTS[layout], generator)
    res = random_input(SHAPE, torch.float32, LAYOUTS[layout], generator)
    dy = torch.randn(SHAPE, generator=generator)
    y_normal, grads_normal = step(normal, x, res, dy)

    x_leaf, res_leaf = x.clone().requires_grad_(), res.clone().requires_grad_()
    h = x_leaf * 1.0
    pointer = h.data_ptr()
    with SavedTensors() as record:
        y = efficient(h, res_leaf)
    assert y.data_ptr() == pointer and y is h, "inplace result does not alias the input"
    assert y.is_contiguous(memory_format=LAYOUTS[layout])
    assert torch.equal(y, y_normal)
    assert record.holds(y)
    y.backward(dy)
    grads = {"input": x_leaf.grad, "residual": res_leaf.grad, "weight": efficient.weight.grad,
             "bias": efficient.bias.grad}
    compare("inplace", grads, grads_normal, TOLERANCE[torch.float32])

    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        efficient(x_leaf)
    with pytest.raises(ValueError, match="shares input's storage"):
        pyfusedbn.batch_norm_act(h, None, None, training=True, activation="elu", residual=h,
                                 memory_efficient=True, inplace=True)


def test_no_grad_and_double_backward(generator):
    x = random_input(SHAPE, torch.float64, generator=generator)
    with torch.no_grad():
        y = pyfusedbn.batch_norm_act(x, None, None, training=True, activation="identity",
                                     memory_efficient=True)
    assert_close("no_grad output", y, F.batch_norm(x, None, None, training=True), 1e-9)
    x = x.requires_grad_()
    y = pyfusedbn.batch_norm_act(x, None, None, training=True, activation="elu",
                                 memory_efficient=True)
    with pytest.raises(RuntimeError, match="double backward .* not supported"):
        torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
