// The GroupNorm family's op schemas (GroupNorm, and InstanceNorm / LayerNorm2d through it), in
// their own fragment of the pyfusedbn namespace (its TORCH_LIBRARY block: common/library.cpp):
// each device registers kernels in its own TORCH_LIBRARY_IMPL block (group_norm_ops_impl), Python registers fake kernels (pyfusedbn/group_norm.py), and the
// layer op's autograd is C++ (csrc/group_norm/autograd.cpp).
#include <torch/library.h>

#include "ops.h"

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
  // The layer as eager runs it: group_norm_act forward, group_norm_act_backward as its backward,
  // autograd registered in C++ (no Python in either direction). mean and rstd are outputs for
  // InstanceNorm's running statistics and are not differentiable.
  m.def(
      "group_norm_act_layer(Tensor input, Tensor? weight, Tensor? bias, Tensor? residual, "
      "int num_groups, float eps, str activation, float activation_param) -> "
      "(Tensor out, Tensor mean, Tensor rstd)");
  // Differentiable gradients for create_graph=True (double backward) through torch ops, implemented
  // in Python (pyfusedbn/composite.py); None where output_mask is False or the argument is None.
  m.def(
      "group_norm_act_composite_backward(Tensor grad_out, Tensor input, Tensor? weight, Tensor? bias, "
      "Tensor? residual, int num_groups, float eps, str activation, float activation_param, "
      "bool[4] output_mask) -> (Tensor?, Tensor?, Tensor?, Tensor?)");
  // The backward as an op, so that eager's C++ autograd (group_norm/autograd.cpp, which implements
  // it) and the Python autograd.Function of torch.compile and torch.export
  // (pyfusedbn/group_norm_autograd.py) share one definition.
  // group_norm_act_layer's backward from what its forward saved (input, weight, bias, residual,
  // mean, rstd), as batch_norm_act_layer_backward.
  // Bytes of scratch memory the latest group_norm_act / group_norm_act_backward call used beyond
  // its outputs (tests hold the LayerNorm2d rows path to its bound with it).
  m.def("group_norm_workspace_bytes() -> int", &pyfusedbn::group_norm_workspace_bytes);
  m.def(
      "group_norm_act_layer_backward(Tensor grad_out, Tensor input, Tensor? weight, Tensor? bias, "
      "Tensor? residual, Tensor mean, Tensor rstd, int num_groups, float eps, str activation, "
      "float activation_param, bool[4] output_mask) "
      "-> (Tensor? grad_input, Tensor? grad_weight, Tensor? grad_bias, Tensor? grad_residual)");
}
