// GroupNorm + activation forward op, written once for every device (backward: backward_ops.h). A Backend supplies the kernels and
// runs the per-(sample, group) algebra (coefficients.h: host loops on CPU, kernels on CUDA)
// on raw pointers into one workspace per direction; this file does the checks, the layout and the
// allocations, and dispatches no tensor op per call beyond them.
#pragma once

#include <string>
#include <tuple>
#include <type_traits>
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
// 32 MiB afresh, a page fault per 4 KiB on first touch each call (a (25088, 96) workspace:
// 67 MB, backward 40 -> 60 ms), while smaller ones reuse its heap. (The rows path, one position
// per sample, has no such arrays: GroupRowsState.)
struct GroupWorkspace {
  std::vector<Tensor> parts;  // one, or one per array
  int64_t per_array;

  template <typename acc_t>
  acc_t* array(int64_t i) const {
    if (parts.empty()) return nullptr;  // no arrays: the rows path
    return parts.size() == 1 ? parts[0].data_ptr<acc_t>() + i * per_array : parts[i].data_ptr<acc_t>();
  }
  int64_t nbytes() const {
    int64_t bytes = 0;
    for (const Tensor& part : parts) bytes += static_cast<int64_t>(part.nbytes());
    return bytes;
  }
  void zero_() const {
    for (const Tensor& part : parts) part.zero_();
  }
};
constexpr int64_t kSplitWorkspaceBytes = int64_t(32) << 20;
GroupWorkspace group_workspace(int64_t arrays, int64_t batch, int64_t channels, const Tensor& like,
                               at::ScalarType acc);

// The rows path's tensors (args.h: GroupRowsCoefficients): the statistics and affine values, and
// in the backward its whole workspace: coef_xc and coef_const per (row, group) in one tensor, the
// parts' parameter-gradient sums in another (double).
struct GroupRowsState {
  Tensor mean, rstd;
  GroupAffine affine;
  int64_t channels = 0, groups = 1;
  Tensor coefficients, partials;
  int64_t parts = 0;

  template <typename acc_t>
  GroupRowsCoefficients<acc_t> args() const {
    acc_t* coefs = coefficients.defined() ? coefficients.data_ptr<acc_t>() : nullptr;
    const int64_t rows_groups = coefficients.defined() ? coefficients.numel() / 2 : 0;
    return {mean.data_ptr<acc_t>(),
            rstd.data_ptr<acc_t>(),
            affine.weight.defined() ? affine.weight.data_ptr<acc_t>() : nullptr,
            affine.bias.defined() ? affine.bias.data_ptr<acc_t>() : nullptr,
            channels,
            groups,
            coefs,
            coefs ? coefs + rows_groups : nullptr,
            partials.defined() ? partials.data_ptr<double>() : nullptr,
            parts};
  }
};
// The backward's state (with_workspace) or the forward's (statistics and affine only).
GroupRowsState group_rows_state(const Tensor& mean, const Tensor& rstd, const GroupAffine& affine,
                                const BnShape& shape, int64_t groups, bool with_workspace);

// Bytes of scratch memory (workspace arrays, partial sums, per-thread blocks) the latest
// group_norm_act or group_norm_act_backward call used beyond its outputs: the op
// group_norm_workspace_bytes, for tests of the rows path's bound. Set by the ops, added to by
// backends that allocate scratch of their own.
void set_group_workspace_bytes(int64_t bytes);
void add_group_workspace_bytes(int64_t bytes);
int64_t group_norm_workspace_bytes();

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

// A Backend may also run the backward part by part, both passes of a part while it is in cache
// (CPU: cpu/group_norm_fused.h): it then has fuses_groups(shape, groups, input), which says where it
// does, and group_backward. Others (CUDA) run the steps below.
template <typename B, typename = void>
struct WalksGroupParts : std::false_type {};
template <typename B>
struct WalksGroupParts<B, std::void_t<decltype(&B::fuses_groups)>> : std::true_type {};

template <typename Backend>
bool walks_group_parts(const BnShape& shape, int64_t groups, const Tensor& input) {
  if constexpr (WalksGroupParts<Backend>::value) return Backend::fuses_groups(shape, groups, input);
  else return false;
}

// Backend steps, per direction (CPU: cpu/group_norm_binding.cpp, CUDA: cuda/group_norm_binding.cpp):
// forward  group_stats (mean, rstd and the apply pass's scale / shift), apply (rows: rows_apply);
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
  const bool rows = group_rows_layout(x.shape);
  const GroupWorkspace workspace = group_workspace(rows ? 0 : kGroupForwardArrays, N, C, input, acc);
  set_group_workspace_bytes(workspace.nbytes());
  const GroupAffine affine = group_affine(weight, bias, input);
  Backend::group_stats(x.input, x.shape, num_groups, eps, affine, mean, rstd, workspace);
  if (rows)
    Backend::rows_apply(x.input, res, group_rows_state(mean, rstd, affine, x.shape, num_groups, false), act,
                        activation_param, out, x.shape);
  else
    Backend::apply(x.input, res, workspace, act, activation_param, out, x.shape);
  return {out, mean, rstd};
}

}  // namespace pyfusedbn
