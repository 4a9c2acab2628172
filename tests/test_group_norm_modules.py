"""GroupNormAct, InstanceNormAct1d/2d/3d and LayerNormAct2d against the torch modules they
replace + the activation: outputs, gradients, running statistics, state_dict both ways."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pyfusedbn
from helpers import TOLERANCE, assert_close, random_input
from pyfusedbn.activations import torch_activation

TOL = TOLERANCE[torch.float64]


def compare_modules(fused, reference, activation, x, residual=None, steps=2):
    """Same state, same input: outputs, input/parameter gradients and buffers after `steps` calls."""
    reference.load_state_dict(fused.state_dict())
    act = torch_activation(activation)
    for step in range(steps):
        x_f = x.detach().clone().requires_grad_()
        x_r = x.detach().clone().requires_grad_()
        out = fused(x_f, residual) if residual is not None else fused(x_f)
        z = reference(x_r)
        ref = act(z + residual if residual is not None else z)
        assert_close(f"output step {step}", out, ref, TOL)
        dy = torch.randn_like(ref)
        out.backward(dy)
        ref.backward(dy)
        assert_close(f"grad_input step {step}", x_f.grad, x_r.grad, TOL)
        for (name, p), (_, q) in zip(fused.named_parameters(), reference.named_parameters()):
            assert_close(f"grad {name}", p.grad, q.grad, TOL)
    for (name, b), (_, c) in zip(fused.named_buffers(), reference.named_buffers()):
        assert_close(f"buffer {name}", b, c, TOL)


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_group_norm_act_matches_nn_group_norm(memory_format, residual, generator):
    fused = pyfusedbn.GroupNormAct(4, 12, dtype=torch.float64)
    with torch.no_grad():
        fused.weight.uniform_(0.5, 1.5)
        fused.bias.normal_()
    x = random_input((3, 12, 5, 4), torch.float64, memory_format, generator)
    res = torch.randn_like(x) if residual else None
    compare_modules(fused, nn.GroupNorm(4, 12, dtype=torch.float64), "silu", x, res)


def test_group_norm_act_state_dict_and_defaults():
    fused, plain = pyfusedbn.GroupNormAct(2, 6), nn.GroupNorm(2, 6)
    assert fused.state_dict().keys() == plain.state_dict().keys()
    assert (fused.eps, fused.affine, fused.activation) == (plain.eps, plain.affine, "silu")
    plain.load_state_dict(fused.state_dict())
    fused.load_state_dict(plain.state_dict())
    assert "activation=silu" in repr(fused)
    assert pyfusedbn.GroupNormAct(2, 6, affine=False).weight is None
    with pytest.raises(ValueError, match="divisible"):
        pyfusedbn.GroupNormAct(4, 6)  # nn.GroupNorm's own check
    with pytest.raises(ValueError, match="activation must be one of"):
        pyfusedbn.GroupNormAct(2, 6, activation="swish")


INSTANCE = [(pyfusedbn.InstanceNormAct1d, nn.InstanceNorm1d, (3, 5, 7)),
            (pyfusedbn.InstanceNormAct2d, nn.InstanceNorm2d, (3, 5, 4, 3)),
            (pyfusedbn.InstanceNormAct3d, nn.InstanceNorm3d, (2, 5, 3, 2, 3))]


@pytest.mark.parametrize("affine,track", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["default", "affine", "track", "affine_track"])
@pytest.mark.parametrize("fused_cls,torch_cls,shape", INSTANCE, ids=["1d", "2d", "3d"])
def test_instance_norm_act_matches_nn_instance_norm(fused_cls, torch_cls, shape, affine, track, generator):
    fused = fused_cls(5, affine=affine, track_running_stats=track, activation="leaky_relu",
                      dtype=torch.float64)
    reference = torch_cls(5, affine=affine, track_running_stats=track, dtype=torch.float64)
    if affine:
        with torch.no_grad():
            fused.weight.uniform_(0.5, 1.5)
            fused.bias.normal_()
    x = random_input(shape, torch.float64, generator=generator)
    compare_modules(fused, reference, "leaky_relu", x, torch.randn_like(x))
    fused.eval(), reference.eval()
    compare_modules(fused, reference, "leaky_relu", x, steps=1)
    # Unbatched input, as torch accepts it.
    compare_modules(fused, reference, "leaky_relu", x[0], steps=1)


def test_instance_norm_act_defaults_and_errors():
    fused, plain = pyfusedbn.InstanceNormAct2d(4), nn.InstanceNorm2d(4)
    assert (fused.affine, fused.track_running_stats, fused.momentum) == (False, False, 0.1)
    assert fused.state_dict().keys() == plain.state_dict().keys()
    tracked = pyfusedbn.InstanceNormAct2d(4, affine=True, track_running_stats=True)
    nn.InstanceNorm2d(4, affine=True, track_running_stats=True).load_state_dict(tracked.state_dict())
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        fused(torch.randn(2, 4, 1, 1))
    with pytest.raises(ValueError, match="expected 3D or 4D input"):
        fused(torch.randn(2, 4, 3, 3, 3))
    with pytest.raises(ValueError, match="match num_features"):
        pyfusedbn.InstanceNormAct2d(3, affine=True)(torch.randn(2, 4, 3, 3))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_layer_norm_act_2d_matches_timm_definition(memory_format, generator):
    fused = pyfusedbn.LayerNormAct2d(6, activation="gelu", dtype=torch.float64)
    with torch.no_grad():
        fused.weight.uniform_(0.5, 1.5)
        fused.bias.normal_()
    x = random_input((2, 6, 5, 3), torch.float64, memory_format, generator).requires_grad_()
    res = torch.randn_like(x, requires_grad=True)
    out = fused(x, res)
    assert out.is_contiguous(memory_format=torch.channels_last)
    x_r, res_r = x.detach().clone().requires_grad_(), res.detach().clone().requires_grad_()
    w_r, b_r = fused.weight.detach().clone().requires_grad_(), fused.bias.detach().clone().requires_grad_()
    z = F.layer_norm(x_r.permute(0, 2, 3, 1), (6,), w_r, b_r, fused.eps).permute(0, 3, 1, 2)
    ref = F.gelu(z + res_r)
    assert_close("output", out, ref, TOL)
    dy = torch.randn_like(ref)
    out.backward(dy)
    ref.backward(dy)
    for name, got, want in (("grad_input", x, x_r), ("grad_residual", res, res_r),
                            ("grad_weight", fused.weight, w_r), ("grad_bias", fused.bias, b_r)):
        assert_close(name, got.grad, want.grad, TOL)
    plain = nn.LayerNorm(6)
    assert plain.state_dict().keys() == fused.state_dict().keys()
    with pytest.raises(ValueError, match=r"expected input of shape \(N, C, H, W\)"):
        fused(torch.randn(2, 6, 5))
