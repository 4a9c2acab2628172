// GroupNorm + activation ops, written once for every device. A Backend supplies the kernels and
// runs the per-(sample, group) algebra (coefficients.h: host loops on CPU, kernels on CUDA)
// on raw pointers into one workspace per direction; this file does the checks, the layout and the
// allocations, and dispatches no tensor op per call beyond them.
#pragma once

#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "../common/checks.h"
#include "args.h"

namespace pyfusedbn {

// The affine parameters as contiguous accumulate-type values, undefined where absent: what the
// per-(sample, group) algebra (coefficients.h) reads on either device.
struct GroupAffine {
  Tensor weight, bias;
};
GroupAffine group_affine(const OptTensor& weight, const OptTensor& bias, const Tensor& input);
// rstd of a group with no elements (var 0), as the algebra rounds it in the accumulate type.
double empty_group_rstd(double eps, at::ScalarType acc);

// One workspace allocation per direction holds the per-(sample, channel) arrays
// (args.h: GroupForwardArrays, GroupBackwardArrays), which the backends carve into
// raw pointers: a step allocates only that beyond its outputs. On the CPU a workspace over
// kSplitWorkspaceBytes is one allocation per array instead: glibc maps every allocation over
// 32 MiB afresh, a page fault per 4 KiB on first touch each call (LayerNorm2d's (25088, 96) rows:
// 67 MB, backward 40 -> 60 ms), while smaller ones reuse its heap.
struct GroupWorkspace {
  std::vector<Tensor> parts;  // one, or one per array
  int64_t per_array;

  template <typename acc_t>
  acc_t* array(int64_t i) const {
    return parts.size() == 1 ? parts[0].data_ptr<acc_t>() + i * per_array : parts[i].data_ptr<acc_t>();
  }
  void zero_() const {
    for (const Tensor& part : parts) part.zero_();
  }
};
constexpr int64_t kSplitWorkspaceBytes = int64_t(32) << 20;
GroupWorkspace group_workspace(int64_t arrays, int64_t batch, int64_t channels, const Tensor& like,
                               at::ScalarType acc);

// The backward's state across its steps: the workspace of GroupBackwardArrays (N * C values
// each), and where a backend keeps g = grad_out * act'(z) between the two passes, when it does
// (CPU, costly activations: csrc/cpu/grad_cache.h); undefined otherwise.
struct BackwardCoefficients {
  GroupWorkspace workspace;
  Tensor grad_cache;

  template <typename acc_t>
  GroupBackwardArrays<acc_t> arrays() const {
    return GroupBackwardArrays<acc_t>::from([&](int64_t i) { return workspace.array<acc_t>(i); });
  }
};

template <typename acc_t>
GroupForwardArrays<acc_t> forward_arrays(const GroupWorkspace& workspace) {
  return GroupForwardArrays<acc_t>::from([&](int64_t i) { return workspace.array<acc_t>(i); });
}

// The algebra's arguments from (N, G) statistics and the affine values, as acc_t pointers.
template <typename acc_t>
GroupCoefficientArgs<acc_t> coefficient_args(const Tensor& mean, const Tensor& rstd, const GroupAffine& affine,
                                             const BnShape& shape, int64_t groups) {
  return {mean.defined() ? mean.data_ptr<acc_t>() : nullptr,
          rstd.data_ptr<acc_t>(),
          affine.weight.defined() ? affine.weight.data_ptr<acc_t>() : nullptr,
          affine.bias.defined() ? affine.bias.data_ptr<acc_t>() : nullptr,
          shape.batch,
          shape.channels,
          groups};
}

void check_num_groups(const Tensor& input, int64_t num_groups, const char* op);
// mean / rstd of the backward: (N, num_groups) on input's device.
void check_per_group(const Tensor& t, const char* name, const Tensor& input, int64_t num_groups,
                     const char* op);

// Backend steps, per direction (CPU: cpu/group_norm_binding.cpp, CUDA: cuda/group_norm_binding.cpp):
// forward  group_stats (mean, rstd and the apply pass's scale / shift), apply;
// backward backward_prepare (rebuild coefficients), backward_reduce (sums),
//          backward_finalize (parameter gradients, elementwise coefficients), backward_elemt.
template <typename Backend>
std::tuple<Tensor, Tensor, Tensor> group_norm_act(const Tensor& input, const OptTensor& weight,
                                                  const OptTensor& bias, const OptTensor& residual,
                                                  int64_t num_groups, double eps,
                                                  const std::string& activation, double activation_param) {
  const char* op = "group_norm_act";
  const ActKind act = parse_activation(activation);
  check_eps_momentum(eps, 0.0, op);
  const LaidOut x = lay_out_input(input, op);
  check_num_groups(input, num_groups, op);
  check_per_channel(weight, "weight", input, op);
  check_per_channel(bias, "bias", input, op);
  const OptTensor res = lay_out_like(residual, "residual", x, op);
  const auto acc = acc_type_of(input);
  const auto options = input.options().dtype(acc);
  const int64_t N = x.shape.batch, C = x.shape.channels;
  Tensor out = empty_like_input(x);
  if (x.shape.numel() == 0) {
    // An empty group's statistics: mean 0, var 0.
    return {out, at::zeros({N, num_groups}, options), at::full({N, num_groups}, empty_group_rstd(eps, acc), options)};
  }
  Tensor mean = at::empty({N, num_groups}, options), rstd = at::empty({N, num_groups}, options);
  const GroupWorkspace workspace = group_workspace(kGroupForwardArrays, N, C, input, acc);
  Backend::group_stats(x.input, x.shape, num_groups, eps, group_affine(weight, bias, input), mean, rstd, workspace);
  Backend::apply(x.input, res, workspace, act, activation_param, out, x.shape);
  return {out, mean, rstd};
}

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
  BackwardCoefficients k{group_workspace(kGroupBackwardArrays, N, C, input, acc), Backend::grad_cache(x.input, act)};
  Tensor grad_weight = at::empty({C}, options), grad_bias = at::empty({C}, options);
  Tensor grad_input = empty_like_input(x);
  Tensor grad_residual = res.has_value() ? empty_like_input(x) : at::empty({0}, input.options());
  const bool empty = x.shape.numel() == 0;
  if (empty) {
    k.workspace.zero_();  // an empty input's sums (so its parameter gradients) are zeros
  } else {
    Backend::backward_prepare(mean_acc, rstd_acc, affine, x.shape, G, k);
    Backend::backward_reduce(dy, x.input, res, k, act, activation_param, false, x.shape);
  }
  const double count = static_cast<double>(C / G * x.shape.spatial);
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
