// The schemas that make each layer op's autograd one definition for both paths: eager's C++
// autograd (batch_norm_act_autograd.cpp, group_norm_act_autograd.cpp, which implement these ops)
// and the Python autograd.Functions that torch.compile and torch.export trace
// (pyfusedbn/batch_norm_autograd.py, group_norm_autograd.py). Both ask the same op what to save
// and call the same op as their backward, so the two cannot drift apart.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pyfusedbn, m) {
  // Which of the optional tensors batch_norm_act's autograd saves beside input, weight, bias,
  // mean and invstd: the residual, or the output (for activations whose derivative reads off it).
  m.def("batch_norm_act_saves(bool has_residual, str activation, float activation_param) "
        "-> (bool residual, bool output)");
  // batch_norm_act's backward from what its forward saved (residual and output as
  // batch_norm_act_saves says, None otherwise): the fused backward op, or with grad mode on
  // (create_graph=True) the differentiable composite. None where output_mask is False.
  m.def(
      "batch_norm_act_layer_backward(Tensor grad_out, Tensor input, Tensor? weight, Tensor? bias, "
      "Tensor? residual, Tensor mean, Tensor invstd, Tensor? output, bool has_residual, bool training, "
      "float eps, str activation, float activation_param, bool[4] output_mask) "
      "-> (Tensor? grad_input, Tensor? grad_weight, Tensor? grad_bias, Tensor? grad_residual)");
  // group_norm_act_layer's backward from what its forward saved (input, weight, bias, residual,
  // mean, rstd), as batch_norm_act_layer_backward.
  m.def(
      "group_norm_act_layer_backward(Tensor grad_out, Tensor input, Tensor? weight, Tensor? bias, "
      "Tensor? residual, Tensor mean, Tensor rstd, int num_groups, float eps, str activation, "
      "float activation_param, bool[4] output_mask) "
      "-> (Tensor? grad_input, Tensor? grad_weight, Tensor? grad_bias, Tensor? grad_residual)");
}
