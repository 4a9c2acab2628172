// The GroupNorm family's op schemas (GroupNorm, and InstanceNorm / LayerNorm2d through it), in
// their own fragment of the pyfusedbn namespace: each device registers kernels in its own
// TORCH_LIBRARY_IMPL block, Python registers fake kernels and autograd (pyfusedbn/group_norm.py).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pyfusedbn, m) {
  // act(group_norm(input) * weight + bias + residual) with statistics per (sample, group);
  // mean and rstd (N, num_groups, accumulate dtype) feed the backward op.
  m.def(
      "group_norm_act(Tensor input, Tensor? weight, Tensor? bias, Tensor? residual, int num_groups, "
      "float eps, str activation, float activation_param) -> (Tensor out, Tensor mean, Tensor rstd)");
  // Every gradient in one call: grad_weight and grad_bias per channel in the accumulate dtype
  // (also without affine: they are the per-channel sums), grad_residual empty without residual.
  m.def(
      "group_norm_act_backward(Tensor grad_out, Tensor input, Tensor mean, Tensor rstd, "
      "Tensor? weight, Tensor? bias, Tensor? residual, int num_groups, str activation, "
      "float activation_param) -> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias, "
      "Tensor grad_residual)");
}
