// batch_norm_act: the whole layer as one op, its autograd registered in C++ (torchvision's
// csrc/ops/autograd pattern). Eager training then costs one op forward and one op backward with
// no Python in between: a Python autograd.Function's own overhead (argument packing, a Python
// backward node) was as large as the fused kernels' host time on small layers.
// The forward calls batch_norm_act_train / _eval_for_backward / _eval and the backward calls
// batch_norm_act_backward, through the dispatcher, so every device's kernels serve it. With
// create_graph=True the backward instead calls batch_norm_act_composite_backward, the
// differentiable torch-op composite (pyfusedbn/composite.py registers it). What is saved and the
// backward are also ops (batch_norm_act_saves, batch_norm_act_layer_backward) that the Python
// autograd of torch.compile and torch.export calls: one definition for both paths.
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <string>
#include <tuple>

#include "../common/autograd_utils.h"

namespace pyfusedbn {
namespace {

using namespace autograd_utils;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using TrainSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const OptTensor&, const OptTensor&,
                                                    const OptTensor&, const OptTensor&, const OptTensor&,
                                                    double, double, const std::string&, double,
                                                    const OptTensor&);
using EvalSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const OptTensor&,
                       const OptTensor&, double, const std::string&, double);
using EvalStatsSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                        const OptTensor&, const OptTensor&, const OptTensor&,
                                                        double, const std::string&, double);
using Grads = std::tuple<OptTensor, OptTensor, OptTensor, OptTensor>;
using BackwardSig = Grads(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                          const OptTensor&, const OptTensor&, bool, const std::string&, double, bool,
                          std::array<bool, 4>);
using CompositeBackwardSig = Grads(const Tensor&, const Tensor&, const OptTensor&, const OptTensor&,
                                   const OptTensor&, const Tensor&, const Tensor&, bool, double,
                                   const std::string&, double, std::array<bool, 4>);

// (out, mean, invstd); mean/invstd undefined when no backward will read them (eval inference).
std::tuple<Tensor, Tensor, Tensor> forward_ops(const Tensor& input, const OptTensor& weight, const OptTensor& bias,
                                               const OptTensor& residual, const OptTensor& running_mean,
                                               const OptTensor& running_var, bool training, double momentum,
                                               double eps, const std::string& activation, double param,
                                               const OptTensor& num_batches_tracked, bool need_backward) {
  if (training) {
    static const auto train = op_handle<TrainSig>("pyfusedbn::batch_norm_act_train");
    return train.call(input, weight, bias, residual, running_mean, running_var, momentum, eps, activation, param,
                      num_batches_tracked);
  }
  if (num_batches_tracked.has_value()) num_batches_tracked->add_(1);
  TORCH_CHECK(running_mean.has_value() && running_var.has_value(),
              "batch_norm_act: running_mean and running_var must be defined in evaluation mode (training=False)");
  if (need_backward) {
    static const auto eval_stats = op_handle<EvalStatsSig>("pyfusedbn::batch_norm_act_eval_for_backward");
    return eval_stats.call(input, *running_mean, *running_var, weight, bias, residual, eps, activation, param);
  }
  static const auto eval = op_handle<EvalSig>("pyfusedbn::batch_norm_act_eval");
  return {eval.call(input, *running_mean, *running_var, weight, bias, residual, eps, activation, param), Tensor(),
          Tensor()};
}

// Activations whose derivative at z is the same function of y = act(z) (a piecewise-constant
// act' whose pieces y tells apart): identity, relu, and leaky_relu with a slope >= 0 (y > 0
// exactly where z > 0). relu6 is not among them: in 16-bit types z just below 6 rounds to y == 6.
bool act_grad_reads_output(const std::string& activation, double param) {
  return activation == "identity" || activation == "relu" || (activation == "leaky_relu" && param >= 0);
}

// grad_out * act'(z) from y, with torch's own backward ops (as eager's activation modules do).
Tensor act_backward_from_output(const Tensor& grad_out, const Tensor& output, const std::string& activation,
                                double param) {
  if (activation == "identity") return grad_out;
  if (activation == "relu") return at::threshold_backward(grad_out, output, 0);
  return at::leaky_relu_backward(grad_out, output, param, /*self_is_result=*/true);
}

// What batch_norm_act's autograd saves beside input, weight, bias, mean and invstd: (residual,
// output). With a residual, z = bn(x) + residual; the backward needs act'(z) and x - mean. For
// the activations whose act' reads off the output, the output is saved instead of the residual
// (nothing for identity): in ResNet's downsampling blocks the residual is the shortcut
// BatchNorm's output, which nothing else keeps, while the output is the next convolution's
// input, which it saves. The op batch_norm_act_saves: the Python autograd asks the same.
std::tuple<bool, bool> saves(bool has_residual, const std::string& activation, double param) {
  const bool grad_from_output = has_residual && act_grad_reads_output(activation, param);
  return {has_residual && !grad_from_output, grad_from_output && activation != "identity"};
}

// The backward of both autograds (this file's and pyfusedbn/batch_norm_autograd.py's, through
// the op batch_norm_act_layer_backward) from what the forward saved.
Grads layer_backward(const Tensor& grad_out, const Tensor& input, const OptTensor& weight, const OptTensor& bias,
                     const OptTensor& residual, const Tensor& mean, const Tensor& invstd, const OptTensor& output,
                     bool has_residual, bool training, double eps, const std::string& activation, double param,
                     std::array<bool, 4> mask) {
  if (has_residual && act_grad_reads_output(activation, param)) {
    // dz = grad_out * act'(z) from the saved output; the rest is the identity's backward
    // without a residual, and dz is the residual's gradient.
    const Tensor dz = act_backward_from_output(grad_out, value_or_undefined(output), activation, param);
    const std::array<bool, 4> bn_mask{mask[0], mask[1], mask[2], false};
    Grads grads = layer_backward(dz, input, weight, bias, c10::nullopt, mean, invstd, c10::nullopt, false,
                                 training, eps, "identity", 0.0, bn_mask);
    std::get<3>(grads) = mask[3] ? OptTensor(dz) : c10::nullopt;
    return grads;
  }
  if (at::GradMode::is_enabled()) {
    // create_graph=True: gradients that are themselves differentiable.
    static const auto composite = op_handle<CompositeBackwardSig>("pyfusedbn::batch_norm_act_composite_backward");
    return composite.call(grad_out, input, weight, bias, residual, mean, invstd, training, eps, activation, param,
                          mask);
  }
  static const auto backward_op = op_handle<BackwardSig>("pyfusedbn::batch_norm_act_backward");
  // Straight to the device kernel: with grad mode off nothing is recorded, but the saved input
  // still requires grad, so the op would otherwise pass through autograd's boxed fallback (it has
  // no autograd kernel), boxing every argument on each backward.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  return backward_op.call(grad_out, input, mean, invstd, weight, bias, residual, training, activation, param, false,
                          mask);
}

class BatchNormActFunction : public torch::autograd::Function<BatchNormActFunction> {
 public:
  // Optional tensors go in as c10::optional: a None is then no autograd input at all, so
  // needs_input_grad counts only the given tensors (see grad_mask).
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const OptTensor& weight, const OptTensor& bias,
                        const OptTensor& residual, const OptTensor& running_mean, const OptTensor& running_var,
                        bool training, double momentum, double eps, const std::string& activation,
                        double param, const OptTensor& num_batches_tracked, bool need_backward) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, mean, invstd] = forward_ops(input, weight, bias, residual, running_mean, running_var, training,
                                           momentum, eps, activation, param, num_batches_tracked, need_backward);
    const auto [save_residual, save_output] = saves(residual.has_value(), activation, param);
    ctx->save_for_backward({input, value_or_undefined(weight), value_or_undefined(bias),
                            save_residual ? *residual : Tensor(), mean, invstd, save_output ? out : Tensor()});
    ctx->saved_data["has_residual"] = residual.has_value();
    ctx->saved_data["training"] = training;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["param"] = param;
    return out;
  }

  // Which of (input, weight, bias, residual) need a gradient. needs_input_grad indexes the
  // autograd inputs, which skip the arguments that were None.
  static std::array<bool, 4> grad_mask(AutogradContext* ctx, const variable_list& saved) {
    const std::array<bool, 4> given{saved[0].defined(), saved[1].defined(), saved[2].defined(),
                                    ctx->saved_data["has_residual"].toBool()};
    std::array<bool, 4> mask{};
    size_t index = 0;
    for (size_t i = 0; i < 4; ++i)
      if (given[i]) mask[i] = ctx->needs_input_grad(index++);
    return mask;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    return gradients_of(layer_backward(
        grad_outputs[0], saved[0], defined_or_none(saved[1]), defined_or_none(saved[2]), defined_or_none(saved[3]),
        saved[4], saved[5], defined_or_none(saved[6]), ctx->saved_data["has_residual"].toBool(),
        ctx->saved_data["training"].toBool(), ctx->saved_data["eps"].toDouble(),
        ctx->saved_data["activation"].toStringRef(), ctx->saved_data["param"].toDouble(), grad_mask(ctx, saved)));
  }

 private:
  // The autograd inputs' gradients: (input, weight, bias, residual), none for the rest.
  static variable_list gradients_of(const Grads& grads) {
    return {value_or_undefined(std::get<0>(grads)), value_or_undefined(std::get<1>(grads)),
            value_or_undefined(std::get<2>(grads)), value_or_undefined(std::get<3>(grads)), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(),
            Tensor(), Tensor()};
  }
};

Tensor batch_norm_act_autograd(const Tensor& input, const OptTensor& weight, const OptTensor& bias,
                               const OptTensor& residual, const OptTensor& running_mean,
                               const OptTensor& running_var, bool training, double momentum, double eps,
                               const std::string& activation, double activation_param,
                               const OptTensor& num_batches_tracked) {
  // Inside forward grad mode is off, so whether anything will run backward is decided here.
  auto wants_grad = [](const OptTensor& t) { return t.has_value() && t->requires_grad(); };
  const bool need_backward = at::GradMode::is_enabled() && (input.requires_grad() || wants_grad(weight) ||
                                                            wants_grad(bias) || wants_grad(residual));
  return BatchNormActFunction::apply(input, weight, bias, residual, running_mean, running_var, training, momentum, eps, activation, activation_param,
                                     num_batches_tracked, need_backward);
}

// Below autograd (inference mode, or a caller that excluded it): the forward alone.
Tensor batch_norm_act_forward_only(const Tensor& input, const OptTensor& weight, const OptTensor& bias,
                                   const OptTensor& residual, const OptTensor& running_mean,
                                   const OptTensor& running_var, bool training, double momentum, double eps,
                                   const std::string& activation, double activation_param,
                                   const OptTensor& num_batches_tracked) {
  return std::get<0>(forward_ops(input, weight, bias, residual, running_mean, running_var, training, momentum, eps,
                                 activation, activation_param, num_batches_tracked, false));
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfusedbn, Autograd, m) { m.impl("batch_norm_act", &batch_norm_act_autograd); }

TORCH_LIBRARY_IMPL(pyfusedbn, CompositeExplicitAutograd, m) {
  m.impl("batch_norm_act", &batch_norm_act_forward_only);
}

// The autograd's rules as ops (schemas in batch_norm/schema.cpp) for the Python autograd that
// torch.compile and torch.export trace: one definition for both paths.
TORCH_LIBRARY_IMPL(pyfusedbn, CompositeImplicitAutograd, m) {
  m.impl("batch_norm_act_saves", &saves);
  m.impl("batch_norm_act_layer_backward", &layer_backward);
}

}  // namespace pyfusedbn
