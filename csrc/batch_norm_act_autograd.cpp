// batch_norm_act: the whole layer as one op, its autograd registered in C++ (torchvision's
// csrc/ops/autograd pattern). Eager training then costs one op forward and one op backward with
// no Python in between: a Python autograd.Function's own overhead (argument packing, a Python
// backward node) was as large as the fused kernels' host time on small layers.
// The forward calls batch_norm_act_train / _eval_for_backward / _eval and the backward calls
// batch_norm_act_backward, through the dispatcher, so every device's kernels serve it. With
// create_graph=True the backward instead calls batch_norm_act_composite_backward, the
// differentiable torch-op composite (pyfusedbn/functional.py registers it).
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <string>
#include <tuple>

#include "autograd_utils.h"

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
    ctx->save_for_backward({input, value_or_undefined(weight), value_or_undefined(bias),
                            value_or_undefined(residual), mean, invstd});
    ctx->saved_data["training"] = training;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["param"] = param;
    return out;
  }

  // Which of (input, weight, bias, residual) need a gradient. needs_input_grad indexes the
  // autograd inputs, which skip the arguments that were None.
  static std::array<bool, 4> grad_mask(AutogradContext* ctx, const variable_list& saved) {
    std::array<bool, 4> mask{};
    size_t index = 0;
    for (size_t i = 0; i < 4; ++i)
      if (saved[i].defined()) mask[i] = ctx->needs_input_grad(index++);
    return mask;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &input = saved[0], &mean = saved[4], &invstd = saved[5];
    const OptTensor weight = defined_or_none(saved[1]), bias = defined_or_none(saved[2]),
                    residual = defined_or_none(saved[3]);
    const bool training = ctx->saved_data["training"].toBool();
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    const double param = ctx->saved_data["param"].toDouble();
    const std::array<bool, 4> mask = grad_mask(ctx, saved);
    Grads grads;
    if (at::GradMode::is_enabled()) {
      // create_graph=True: gradients that are themselves differentiable.
      static const auto composite = op_handle<CompositeBackwardSig>("pyfusedbn::batch_norm_act_composite_backward");
      grads = composite.call(grad_outputs[0], input, weight, bias, residual, mean, invstd, training,
                             ctx->saved_data["eps"].toDouble(), activation, param, mask);
    } else {
      static const auto backward_op = op_handle<BackwardSig>("pyfusedbn::batch_norm_act_backward");
      grads = backward_op.call(grad_outputs[0], input, mean, invstd, weight, bias, residual, training, activation,
                               param, false, mask);
    }
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

}  // namespace pyfusedbn
