"""Shared by the GroupNorm-family tests: the table of shapes/layouts/groups and the float64
torch reference (nn.functional norm + residual + activation)."""
import torch
import torch.nn.functional as F

import pyfusedbn
from pyfusedbn.activations import torch_activation
from helpers import TOLERANCE, assert_close, near_kink, param_dtype, random_input

# (id, input shape, memory format, num_groups): every rank, channels_last, one group, one channel
# per group (InstanceNorm's case), groups wider than a SIMD chunk, a 2-D input (one position),
# channels_last samples walked one by one (a batch of one; > 2 * 32768 elements each).
GROUP_CASES = [
    ("2d_g2", (5, 6), torch.contiguous_format, 2),
    ("3d_g3", (3, 6, 7), torch.contiguous_format, 3),
    ("4d_g2", (3, 6, 5, 4), torch.contiguous_format, 2),
    ("4d_cl_g3", (3, 6, 5, 4), torch.channels_last, 3),
    ("4d_g1", (2, 4, 3, 5), torch.contiguous_format, 1),
    ("4d_cl_instance", (2, 5, 3, 3), torch.channels_last, 5),
    ("4d_cl_wide", (2, 160, 3, 2), torch.channels_last, 4),
    ("5d_g2", (2, 4, 3, 2, 3), torch.contiguous_format, 2),
    ("5d_cl_g2", (2, 4, 3, 2, 3), torch.channels_last_3d, 2),
    ("4d_long_plane", (2, 4, 80, 70), torch.contiguous_format, 2),
    # channels_last walks samples: a batch of one, and samples big enough to split inside.
    ("4d_cl_batch1", (1, 24, 9, 7), torch.channels_last, 6),
    ("4d_cl_large", (2, 64, 40, 32), torch.channels_last, 8),
]
CASE_IDS = [case[0] for case in GROUP_CASES]


def reference_group_norm_act(x, num_groups, weight, bias, eps, activation, activation_param,
                             residual=None):
    z = F.group_norm(x, num_groups, weight, bias, eps)
    if residual is not None:
        z = z + residual
    return torch_activation(activation, activation_param)(z)


def make_inputs(shape, dtype, memory_format, generator, affine=True, residual=True):
    """x, weight, bias, residual and grad_out; parameters in torch's parameter dtype."""
    c = shape[1]
    pdtype = param_dtype(dtype)
    x = random_input(shape, dtype, memory_format, generator)
    weight = (torch.rand(c, generator=generator, dtype=torch.float64) + 0.5).to(pdtype) if affine else None
    bias = torch.randn(c, generator=generator, dtype=torch.float64).to(pdtype) if affine else None
    res = random_input(shape, dtype, memory_format, generator, mean=0.0, scale=1.0) if residual else None
    grad_out = random_input(shape, dtype, memory_format, generator, mean=0.0, scale=1.0)
    return x, weight, bias, res, grad_out


def leaves64(*tensors):
    """float64 leaf copies requiring grad (None stays None)."""
    return [None if t is None else t.detach().to(torch.float64).requires_grad_() for t in tensors]


def leaves(*tensors):
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


EPS = 1e-5


def residual_off_kinks(x, groups, w, b, res, activation):
    """res with every element whose pre-activation lies within rounding of a kink moved away from it.
    There, which side the derivative takes is decided by how the kernel rounded z; a flipped element
    changes its group's sums and so the whole group's grad_input (a float32 relu at z = 7e-9 did).
    Moving the residual moves z alone, not the group statistics."""
    w64, b64 = [None if t is None else t.double() for t in (w, b)]
    z = F.group_norm(x.double(), groups, w64, b64, EPS) + res.double()
    relative_margin = 8 * torch.finfo(x.dtype).eps
    near = near_kink(activation, z, relative_margin)
    return torch.where(near, (res.double() + 4 * relative_margin * (1 + z.abs())).to(res.dtype), res)


def check_against_float64(case, dtype, activation, generator, affine=True, residual=True, device="cpu"):
    """group_norm_act on `device` against the float64 CPU reference: output and every gradient."""
    _, shape, memory_format, groups = case
    x, w, b, res, dy = make_inputs(shape, dtype, memory_format, generator, affine, residual)
    if res is not None:
        res = residual_off_kinks(x, groups, w, b, res, activation)
    x, w, b, res, dy = [None if t is None else t.to(device) for t in (x, w, b, res, dy)]
    x_f, w_f, b_f, res_f = leaves(x, w, b, res)
    out = pyfusedbn.group_norm_act(x_f, groups, w_f, b_f, EPS, activation, residual=res_f)
    assert out.dtype == dtype and out.shape == x.shape and out.device == x.device
    assert out.is_contiguous(memory_format=memory_format)
    out.backward(dy)
    x_r, w_r, b_r, res_r = leaves64(*[None if t is None else t.cpu() for t in (x, w, b, res)])
    ref = reference_group_norm_act(x_r, groups, w_r, b_r, EPS, activation, None, res_r)
    ref.backward(dy.cpu().to(torch.float64))
    tol = TOLERANCE[dtype]
    assert_close("output", out, ref, tol)
    for name, got, want in (("grad_input", x_f, x_r), ("grad_weight", w_f, w_r),
                            ("grad_bias", b_f, b_r), ("grad_residual", res_f, res_r)):
        if want is not None:
            assert_close(name, got.grad, want.grad, tol)
