// The GroupNorm backward op, written once for every device (see ops.h for the layering):
// group_norm_act_backward is the whole backward in one op call (the autograd path), its steps
// the Backend's (prepare, reduce, finalize, elementwise) over one workspace; the rows path's
// (rows_backward_reduce, rows_backward_finalize, rows_backward_elemt) over GroupRowsState.
#pragma once

#include <torch/library.h>

#include <string>
#include <tuple>

#include "ops.h"

namespace pyfusedbn {

// mean / rstd of the backward: (N, num_groups) on input's device.
void check_per_group(const Tensor& t, const char* name, const Tensor& input, int64_t num_groups,
                     const char* op);

// The backward's state across its steps: the workspace of GroupBackwardArrays (N * C values
// each), and where a backend keeps g = grad_out * act'(z) between the two passes, when it does
// (CPU, costly activations: csrc/cpu/grad_cache.h); undefined otherwise.
// (The rows path, args.h: group_rows_layout, has neither: its state is a GroupRowsState.)
struct BackwardCoefficients {
  GroupWorkspace workspace;
  Tensor grad_cache;

  template <typename acc_t>
  GroupBackwardArrays<acc_t> arrays() const {
    return GroupBackwardArrays<acc_t>::from([&](int64_t i) { return workspace.array<acc_t>(i); });
  }
};

template <typename Backend>
std::tuple<Tensor, Tensor, Tensor, Tensor> group_norm_act_backward(
    const Tensor& grad_out, const Tensor& input, const Tensor& mean, const Tensor& rstd,
    const OptTensor& weight, const OptTensor& bias, const OptTensor& residual, int64_t num_groups,
    const std::string& activation, double activation_param) {
  const char* op = "group_norm_act_backward";
  const ActKind act = parse_activation(activation);
  const LaidOut x = lay_out_input(input, op);
  check_num_groups(input, num_groups, op);
  const Tensor dy = lay_out_like(grad_out, "grad_out", x, op);
  const OptTensor res = lay_out_like(residual, "residual", x, op);
  check_per_group(mean, "mean", input, num_groups, op);
  check_per_group(rstd, "rstd", input, num_groups, op);
  check_per_channel(weight, "weight", input, op);
  check_per_channel(bias, "bias", input, op);
  const auto acc = acc_type_of(input);
  const auto options = input.options().dtype(acc);
  const int64_t N = x.shape.batch, C = x.shape.channels, G = num_groups;
  const Tensor mean_acc = as_acc(mean, input), rstd_acc = as_acc(rstd, input);
  const GroupAffine affine = group_affine(weight, bias, input);
  Tensor grad_weight = at::empty({C}, options), grad_bias = at::empty({C}, options);
  Tensor grad_input = empty_like_input(x);
  Tensor grad_residual = res.has_value() ? empty_like_input(x) : at::empty({0}, input.options());
  const bool empty = x.shape.numel() == 0;
  const double count = static_cast<double>(C / G * x.shape.spatial);
  if (group_rows_layout(x.shape)) {
    const GroupRowsState rows = group_rows_state(mean_acc, rstd_acc, affine, x.shape, G, true);
    set_group_workspace_bytes(static_cast<int64_t>(rows.coefficients.nbytes() + rows.partials.nbytes()));
    if (empty) {
      rows.partials.zero_();
    } else {
      Backend::rows_backward_reduce(dy, x.input, res, rows, act, activation_param, count, x.shape);
    }
    Backend::rows_backward_finalize(rows, grad_weight, grad_bias);
    if (!empty) Backend::rows_backward_elemt(dy, x.input, res, rows, act, activation_param, grad_input, grad_residual, x.shape);
    return {grad_input, grad_weight, grad_bias, grad_residual};
  }
  if constexpr (WalksGroupParts<Backend>::value) {
    if (!empty && walks_group_parts<Backend>(x.shape, G, input)) {
      const GroupWorkspace workspace = group_workspace(kGroupBackwardArrays, N, C, input, acc);
      set_group_workspace_bytes(workspace.nbytes());
      Backend::group_backward(dy, x.input, res, mean_acc, rstd_acc, affine, G, count, workspace, act, activation_param,
                              grad_input, grad_residual, grad_weight, grad_bias, x.shape);
      return {grad_input, grad_weight, grad_bias, grad_residual};
    }
  }
  BackwardCoefficients k{group_workspace(kGroupBackwardArrays, N, C, input, acc), Backend::grad_cache(x.input, act)};
  set_group_workspace_bytes(k.workspace.nbytes() + (k.grad_cache.defined() ? static_cast<int64_t>(k.grad_cache.nbytes()) : 0));
  if (empty) {
    k.workspace.zero_();  // an empty input's sums (so its parameter gradients) are zeros
  } else {
    Backend::backward_prepare(mean_acc, rstd_acc, affine, x.shape, G, k);
    Backend::backward_reduce(dy, x.input, res, k, act, activation_param, false, x.shape);
  }
  Backend::backward_finalize(rstd_acc, affine, x.shape, G, count, k, grad_weight, grad_bias);
  if (!empty)
    Backend::backward_elemt(dy, x.input, res, k, act, activation_param, false, grad_input, grad_residual, x.shape);
  return {grad_input, grad_weight, grad_bias, grad_residual};
}

// Every GroupNorm op's kernel over one device's Backend: the body of that device's
// TORCH_LIBRARY_IMPL block (cpu/group_norm_binding.cpp, cuda/group_norm_binding.cpp).
template <typename Backend>
void group_norm_ops_impl(torch::Library& m) {
  m.impl("group_norm_act", &group_norm_act<Backend>);
  m.impl("group_norm_act_backward", &group_norm_act_backward<Backend>);
}

}  // namespace pyfusedbn
