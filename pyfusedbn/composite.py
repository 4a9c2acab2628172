"""The fused layer as differentiable torch ops: what double backward (create_graph=True)
differentiates, since the fused backward kernels are not themselves differentiable. Registered
as the CompositeImplicitAutograd op pyfusedbn::batch_norm_act_composite_backward, which the C++
autograd's backward calls under create_graph; the Python autograd.Function (compile/export path)
calls composite_grads directly."""
import torch

from ._ops import acc_dtype
from .activations import ACTIVATIONS


def composite_grads(grad_out, input, weight, bias, residual, mean, invstd, training, eps,
                    activation, activation_param, output_mask):
    """(grad_input, grad_weight, grad_bias, grad_residual) through the composite forward, with
    create_graph=True; None where output_mask says no or the argument is None."""
    wanted = [t is not None and need for t, need in zip((input, weight, bias, residual), output_mask)]
    diff = [t for t, want in zip((input, weight, bias, residual), wanted) if want]
    with torch.enable_grad():
        out = composite_batch_norm_act(input, weight, bias, residual, training, eps, activation,
                                       activation_param, None if training else (mean, invstd))
        grads = iter(torch.autograd.grad(out, diff, grad_out, create_graph=True, allow_unused=True)
                     if diff else ())
    return tuple(next(grads) if want else None for want in wanted)


torch.library.impl("pyfusedbn::batch_norm_act_composite_backward", "CompositeImplicitAutograd")(
    composite_grads)


def composite_batch_norm_act(input, weight, bias, residual, training, eps, activation,
                             activation_param, eval_stats=None):
    """The forward in plain torch ops (no running-stat update). eval_stats: (mean, invstd)."""
    shape = (1, -1) + (1,) * (input.dim() - 2)
    acc = acc_dtype(input.dtype)
    x = input.to(acc)
    if training:
        dims = [0] + list(range(2, input.dim()))
        var, mean = torch.var_mean(x, dim=dims, unbiased=False)
        invstd = torch.rsqrt(var + eps)
    else:
        mean, invstd = eval_stats
    z = (x - mean.reshape(shape)) * invstd.reshape(shape)
    if weight is not None:
        z = z * weight.to(acc).reshape(shape)
    if bias is not None:
        z = z + bias.to(acc).reshape(shape)
    if residual is not None:
        z = z + residual.to(acc)
    # activation_param is already resolved (0.0 for parameter-free activations).
    return ACTIVATIONS[activation].torch_fn(z, activation_param).to(input.dtype)
