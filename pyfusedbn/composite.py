"""Each fused layer as differentiable torch ops: what double backward (create_graph=True)
differentiates, since the fused backward kernels are not themselves differentiable. Registered
as the CompositeImplicitAutograd ops pyfusedbn::batch_norm_act_composite_backward and
group_norm_act_composite_backward, which both autograds' backward (the layer_backward ops)
call under create_graph."""
import torch
import torch.nn.functional as F

from ._common import acc_dtype
from .activations import ACTIVATIONS


def composite_grads(grad_out, forward, tensors, output_mask):
    """(grad_input, grad_weight, grad_bias, grad_residual): the gradients of forward(), a
    composite of torch ops of tensors = (input, weight, bias, residual), with create_graph=True
    so they are themselves differentiable (gradgradcheck); None where output_mask says no or the
    tensor is None."""
    wanted = [t is not None and need for t, need in zip(tensors, output_mask)]
    diff = [t for t, want in zip(tensors, wanted) if want]
    with torch.enable_grad():
        out = forward()
        grads = iter(torch.autograd.grad(out, diff, grad_out, create_graph=True, allow_unused=True)
                     if diff else ())
    return tuple(next(grads) if want else None for want in wanted)


@torch.library.impl("pyfusedbn::batch_norm_act_composite_backward", "CompositeImplicitAutograd")
def batch_norm_act_composite_grads(grad_out, input, weight, bias, residual, mean, invstd, training,
                                   eps, activation, activation_param, output_mask):
    forward = lambda: composite_batch_norm_act(input, weight, bias, residual, training, eps,
                                               activation, activation_param,
                                               None if training else (mean, invstd))
    return composite_grads(grad_out, forward, (input, weight, bias, residual), output_mask)


@torch.library.impl("pyfusedbn::group_norm_act_composite_backward", "CompositeImplicitAutograd")
def group_norm_act_composite_grads(grad_out, input, weight, bias, residual, num_groups, eps,
                                   activation, activation_param, output_mask):
    forward = lambda: composite_group_norm_act(input, num_groups, weight, bias, eps, activation,
                                               activation_param, residual)
    return composite_grads(grad_out, forward, (input, weight, bias, residual), output_mask)


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


def composite_group_norm_act(input, num_groups, weight, bias, eps, activation, activation_param,
                             residual=None):
    """The forward in plain torch ops, accumulating in float32 (float64 for float64 input)."""
    acc = acc_dtype(input.dtype)
    to_acc = lambda t: None if t is None else t.to(acc)
    z = F.group_norm(input.to(acc), num_groups, to_acc(weight), to_acc(bias), eps)
    if residual is not None:
        z = z + residual.to(acc)
    # activation_param is already resolved (0.0 for parameter-free activations).
    return ACTIVATIONS[activation].torch_fn(z, activation_param).to(input.dtype)
