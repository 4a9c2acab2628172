// group_norm_act_layer: the GroupNorm-family layer as one op with its autograd in C++, as
// batch_norm_act (csrc/batch_norm/autograd.cpp, which says why): eager training costs one
// op forward (group_norm_act) and one backward (group_norm_act_backward) with no Python node.
// With create_graph=True the backward calls group_norm_act_composite_backward instead, the
// differentiable torch-op composite registered from Python (pyfusedbn/composite.py). The backward
// is also the op group_norm_act_layer_backward, which the Python autograd of torch.compile and
// torch.export calls: one definition for both paths.
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

using ForwardSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const OptTensor&, const OptTensor&,
                                                      const OptTensor&, int64_t, double, const std::string&,
                                                      double);
using Grads = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using BackwardSig = Grads(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                          const OptTensor&, const OptTensor&, int64_t, const std::string&, double);
using OptGrads = std::tuple<OptTensor, OptTensor, OptTensor, OptTensor>;
using CompositeSig = OptGrads(const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                              int64_t, double, const std::string&, double, std::array<bool, 4>);

std::tuple<Tensor, Tensor, Tensor> forward_op(const Tensor& input, const OptTensor& weight, const OptTensor& bias,
                                              const OptTensor& residual, int64_t num_groups, double eps,
                                              const std::string& activation, double param) {
  static const auto op = op_handle<ForwardSig>("pyfusedbn::group_norm_act");
  return op.call(input, weight, bias, residual, num_groups, eps, activation, param);
}

// The backward of both autograds (this file's and pyfusedbn/group_norm_autograd.py's, through the
// op group_norm_act_layer_backward) from what the forward saved; None where mask is false.
OptGrads layer_backward(const Tensor& grad_out, const Tensor& input, const OptTensor& weight, const OptTensor& bias,
                        const OptTensor& residual, const Tensor& mean, const Tensor& rstd, int64_t num_groups,
                        double eps, const std::string& activation, double param, std::array<bool, 4> mask) {
  std::array<Tensor, 4> grads;
  if (at::GradMode::is_enabled()) {
    // create_graph=True: gradients that are themselves differentiable.
    static const auto composite = op_handle<CompositeSig>("pyfusedbn::group_norm_act_composite_backward");
    const auto g = composite.call(grad_out, input, weight, bias, residual, num_groups, eps, activation, param, mask);
    grads = {value_or_undefined(std::get<0>(g)), value_or_undefined(std::get<1>(g)),
             value_or_undefined(std::get<2>(g)), value_or_undefined(std::get<3>(g))};
  } else {
    static const auto backward_op = op_handle<BackwardSig>("pyfusedbn::group_norm_act_backward");
    auto [dx, dw, db, dres] =
        backward_op.call(grad_out, input, mean, rstd, weight, bias, residual, num_groups, activation, param);
    // Parameter gradients come in the accumulate dtype; autograd wants the parameter's.
    auto in_dtype_of = [](const Tensor& grad, const OptTensor& param) {
      if (!param) return Tensor();
      return grad.scalar_type() == param->scalar_type() ? grad : grad.to(param->scalar_type());
    };
    grads = {dx, in_dtype_of(dw, weight), in_dtype_of(db, bias), residual ? dres : Tensor()};
  }
  auto wanted = [&](size_t i) { return mask[i] && grads[i].defined() ? OptTensor(grads[i]) : c10::nullopt; };
  return {wanted(0), wanted(1), wanted(2), wanted(3)};
}

class GroupNormActFunction : public torch::autograd::Function<GroupNormActFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const OptTensor& weight,
                               const OptTensor& bias, const OptTensor& residual, int64_t num_groups, double eps,
                               const std::string& activation, double param) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, mean, rstd] = forward_op(input, weight, bias, residual, num_groups, eps, activation, param);
    ctx->save_for_backward({input, value_or_undefined(weight), value_or_undefined(bias),
                            value_or_undefined(residual), mean, rstd});
    ctx->mark_non_differentiable({mean, rstd});
    // No zero tensors for mean/rstd's (never defined) gradients; out's undefined one means no gradient.
    ctx->set_materialize_grads(false);
    ctx->saved_data["num_groups"] = num_groups;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["param"] = param;
    return {out, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    if (!grad_outputs[0].defined()) return variable_list(8);
    const auto saved = ctx->get_saved_variables();
    // needs_input_grad indexes the autograd inputs, which skip the optional ones given as None.
    std::array<bool, 4> mask{};
    for (size_t i = 0, index = 0; i < 4; ++i)
      if (saved[i].defined()) mask[i] = ctx->needs_input_grad(index++);
    const auto grads = layer_backward(grad_outputs[0], saved[0], defined_or_none(saved[1]), defined_or_none(saved[2]),
                                      defined_or_none(saved[3]), saved[4], saved[5],
                                      ctx->saved_data["num_groups"].toInt(), ctx->saved_data["eps"].toDouble(),
                                      ctx->saved_data["activation"].toStringRef(),
                                      ctx->saved_data["param"].toDouble(), mask);
    return {value_or_undefined(std::get<0>(grads)), value_or_undefined(std::get<1>(grads)),
            value_or_undefined(std::get<2>(grads)), value_or_undefined(std::get<3>(grads)), Tensor(), Tensor(),
            Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor> group_norm_act_layer_autograd(const Tensor& input, const OptTensor& weight,
                                                                 const OptTensor& bias, const OptTensor& residual,
                                                                 int64_t num_groups, double eps,
                                                                 const std::string& activation, double param) {
  auto outputs = GroupNormActFunction::apply(input, weight, bias, residual, num_groups, eps, activation, param);
  return {outputs[0], outputs[1], outputs[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfusedbn, Autograd, m) { m.impl("group_norm_act_layer", &group_norm_act_layer_autograd); }

// Below autograd (inference mode, or a caller that excluded it): the forward op itself.
TORCH_LIBRARY_IMPL(pyfusedbn, CompositeExplicitAutograd, m) { m.impl("group_norm_act_layer", &forward_op); }

// The backward as an op (schema in group_norm/schema.cpp) for the Python autograd that
// torch.compile and torch.export trace: one definition for both paths.
TORCH_LIBRARY_IMPL(pyfusedbn, CompositeImplicitAutograd, m) {
  m.impl("group_norm_act_layer_backward", &layer_backward);
}

}  // namespace pyfusedbn
