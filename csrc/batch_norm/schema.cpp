// The BatchNorm family's op schemas, in their own fragment of the pyfusedbn namespace (its
// TORCH_LIBRARY block: common/library.cpp), and nothing else: each device registers kernels in
// its own TORCH_LIBRARY_IMPL block (batch_norm_ops_impl), Python registers fake kernels, and the
// layer op's autograd is C++ (csrc/batch_norm/autograd.cpp).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pyfusedbn, m) {
  // Per-channel mean and biased variance (float32 for half/bfloat16/float32 input, float64 for float64).
  m.def("batch_norm_stats(Tensor input) -> (Tensor mean, Tensor var)");
  // Training forward: batch statistics, running-stat update (in place), normalise + affine +
  // residual + activation in one pass. save_mean/save_invstd feed the backward ops.
  // num_batches_tracked (a module's counter) is incremented by one when given.
  m.def(
      "batch_norm_act_train(Tensor input, Tensor? weight, Tensor? bias, Tensor? residual, "
      "Tensor(a!)? running_mean, Tensor(b!)? running_var, float momentum, float eps, "
      "str activation, float activation_param, Tensor(c!)? num_batches_tracked=None) "
      "-> (Tensor out, Tensor save_mean, Tensor save_invstd)");
  // Inference forward from running statistics.
  m.def(
      "batch_norm_act_eval(Tensor input, Tensor running_mean, Tensor running_var, Tensor? weight, "
      "Tensor? bias, Tensor? residual, float eps, str activation, float activation_param) -> Tensor");
  // Eval forward that also returns the running statistics as (mean, invstd) in the accumulate
  // dtype, for a backward through an eval-mode layer (frozen statistics, trainable affine).
  m.def(
      "batch_norm_act_eval_for_backward(Tensor input, Tensor running_mean, Tensor running_var, "
      "Tensor? weight, Tensor? bias, Tensor? residual, float eps, str activation, "
      "float activation_param) -> (Tensor out, Tensor save_mean, Tensor save_invstd)");
  // Forward from given statistics (used by the synchronised BatchNorm after its all-gather).
  m.def(
      "batch_norm_act_apply(Tensor input, Tensor mean, Tensor invstd, Tensor? weight, Tensor? bias, "
      "Tensor? residual, str activation, float activation_param) -> Tensor");
  // Backward pass 1: per-channel sum(g) and sum(g * x_hat), g = grad_out * act'(pre-activation).
  // `saved` is the forward's input, or its output with from_output=True (memory-saving mode,
  // invertible activations only).
  m.def(
      "batch_norm_act_backward_reduce(Tensor grad_out, Tensor saved, Tensor mean, Tensor invstd, "
      "Tensor? weight, Tensor? bias, Tensor? residual, str activation, float activation_param, "
      "bool from_output=False) -> (Tensor sum_g, Tensor sum_g_xhat)");
  // Backward pass 2: grad_input (and grad_residual = g when residual is given, else an empty
  // tensor). mean_g/mean_g_xhat None means eval mode.
  m.def(
      "batch_norm_act_backward_elemt(Tensor grad_out, Tensor saved, Tensor mean, Tensor invstd, "
      "Tensor? weight, Tensor? bias, Tensor? residual, Tensor? mean_g, Tensor? mean_g_xhat, "
      "str activation, float activation_param, bool from_output=False) "
      "-> (Tensor grad_input, Tensor grad_residual)");
  // The whole backward in one call: reduce (when training or weight/bias need gradients), the
  // per-channel finalize, elementwise pass (when input/residual need gradients). output_mask:
  // which of (input, weight, bias, residual) need a gradient; the others come back None.
  // `training`: the forward used batch statistics (so they depend on the input).
  m.def(
      "batch_norm_act_backward(Tensor grad_out, Tensor saved, Tensor mean, Tensor invstd, "
      "Tensor? weight, Tensor? bias, Tensor? residual, bool training, str activation, "
      "float activation_param, bool from_output, bool[4] output_mask) "
      "-> (Tensor? grad_input, Tensor? grad_weight, Tensor? grad_bias, Tensor? grad_residual)");
  // The whole layer, forward with its autograd (csrc/batch_norm/autograd.cpp): the training
  // forward (batch statistics, running statistics updated in place) or the eval forward, and
  // batch_norm_act_backward as its backward.
  m.def(
      "batch_norm_act(Tensor input, Tensor? weight, Tensor? bias, Tensor? residual, "
      "Tensor(a!)? running_mean, Tensor(b!)? running_var, bool training, float momentum, float eps, "
      "str activation, float activation_param, Tensor(c!)? num_batches_tracked=None) -> Tensor");
  // batch_norm_act's backward as differentiable torch ops, for create_graph=True (double
  // backward); implemented in Python (pyfusedbn/composite.py) as CompositeImplicitAutograd.
  m.def(
      "batch_norm_act_composite_backward(Tensor grad_out, Tensor input, Tensor? weight, Tensor? bias, "
      "Tensor? residual, Tensor mean, Tensor invstd, bool training, float eps, str activation, "
      "float activation_param, bool[4] output_mask) "
      "-> (Tensor? grad_input, Tensor? grad_weight, Tensor? grad_bias, Tensor? grad_residual)");
  // The autograd's rules as ops, so that eager's C++ autograd (batch_norm/autograd.cpp, which
  // implements them) and the Python autograd.Function that torch.compile and torch.export trace
  // (pyfusedbn/batch_norm_autograd.py) ask the same op what to save and call the same backward.
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
}
