// The per-channel steps (coefficients.h) as the device-independent op code describes them to
// a backend: accumulate-type vectors as untyped pointers into one workspace allocation, weight/
// bias and running buffers with the dtype class the kernels take. Each backend turns these into
// the typed argument structs (typed_args) inside its dtype dispatch and runs them: a loop on the
// CPU, one small kernel on CUDA. None of this dispatches a torch op.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "../common/checks.h"
#include "coefficients.h"

namespace pyfusedbn {

// An untyped workspace slot or tensor data pointer as the kernels' typed one.
template <typename T>
T* typed(const void* p) { return static_cast<T*>(const_cast<void*>(p)); }

// `count` vectors of C accumulate-type values in one allocation: on the CPU plain host memory
// (no torch op at all), on a GPU one allocation from torch's caching allocator.
class ChannelWorkspace {
 public:
  ChannelWorkspace(const Tensor& like, int64_t channels, int count)
      : options_(like.options().dtype(acc_type_of(like))),
        channels_(channels),
        stride_bytes_(channels * static_cast<int64_t>(c10::elementSize(acc_type_of(like)))) {
    if (like.is_cpu()) {
      host_.resize(static_cast<size_t>((stride_bytes_ * count + 7) / 8));  // doubles: 8-byte aligned
      base_ = host_.data();
    } else {
      device_ = at::empty({channels * count}, options_);
      base_ = device_.data_ptr();
    }
  }
  void* operator[](int i) const { return static_cast<char*>(base_) + i * stride_bytes_; }
  // A tensor view of one vector (for the rare host-side fallbacks); valid while this lives.
  Tensor tensor(int i) const { return at::from_blob((*this)[i], {channels_}, options_); }

 private:
  at::TensorOptions options_;
  int64_t channels_;
  int64_t stride_bytes_;
  std::vector<double> host_;
  Tensor device_;
  void* base_ = nullptr;
};

// weight and bias as the kernels read them: both in the accumulate type or both in the input's
// type. Any other mix is converted to the accumulate type here (a host op; unusual models only).
struct ChannelParams {
  OptTensor weight, bias;
  bool is_acc = true;
  const void* weight_ptr() const { return weight.has_value() ? weight->data_ptr() : nullptr; }
  const void* bias_ptr() const { return bias.has_value() ? bias->data_ptr() : nullptr; }
};
ChannelParams channel_params(const OptTensor& weight, const OptTensor& bias, const Tensor& input);

struct ForwardStep {
  const void* mean;
  const void* var;
  const ChannelParams* params;
  void* running_mean;  // nullptr: not tracked, or updated on the host (update_running_stats)
  void* running_var;
  bool running_is_acc;
  void* invstd;
  void* scale;
  void* shift;
  double eps, keep, mean_weight, var_weight;
  int64_t* batches_tracked;
  int64_t channels;
};

struct EvalStep {
  const void* running_mean;
  const void* running_var;
  bool running_is_acc;
  const ChannelParams* params;
  void* mean;
  void* invstd;
  void* scale;
  void* shift;
  double eps;
  int64_t channels;
};

struct PrepareStep {
  const void* mean;
  const void* invstd;
  const ChannelParams* params;
  void* scale;
  void* bias;   // nullptr: not wanted
  void* shift;  // nullptr: not wanted
  int64_t channels;
};

struct BackwardStep {
  const void* invstd;
  const void* scale;
  const void* sum_g;  // nullptr: both sums are 0
  const void* sum_g_xc;
  bool params_are_acc;  // the dtype class of grad_weight/grad_bias
  void* grad_weight;
  void* grad_bias;
  void* coef_xc;  // nullptr: not wanted
  void* coef_const;
  double inv_count;
  bool training;
  bool sums_are_xhat;
  int64_t channels;
};

template <typename acc_t, typename param_t, typename running_t>
ForwardFinalizeArgs<acc_t, param_t, running_t> typed_args(const ForwardStep& s) {
  return {static_cast<const acc_t*>(s.mean),          static_cast<const acc_t*>(s.var),
          static_cast<const param_t*>(s.params->weight_ptr()), static_cast<const param_t*>(s.params->bias_ptr()),
          static_cast<running_t*>(s.running_mean),    static_cast<running_t*>(s.running_var),
          static_cast<acc_t*>(s.invstd),              static_cast<acc_t*>(s.scale),
          static_cast<acc_t*>(s.shift),               static_cast<acc_t>(s.eps),
          static_cast<acc_t>(s.keep),                 static_cast<acc_t>(s.mean_weight),
          static_cast<acc_t>(s.var_weight),           s.batches_tracked,
          s.channels};
}

template <typename acc_t, typename param_t, typename running_t>
EvalFinalizeArgs<acc_t, param_t, running_t> typed_args(const EvalStep& s) {
  return {static_cast<const running_t*>(s.running_mean), static_cast<const running_t*>(s.running_var),
          static_cast<const param_t*>(s.params->weight_ptr()), static_cast<const param_t*>(s.params->bias_ptr()),
          static_cast<acc_t*>(s.mean),  static_cast<acc_t*>(s.invstd), static_cast<acc_t*>(s.scale),
          static_cast<acc_t*>(s.shift), static_cast<acc_t>(s.eps),     s.channels};
}

template <typename acc_t, typename param_t>
PrepareArgs<acc_t, param_t> typed_args(const PrepareStep& s) {
  return {static_cast<const acc_t*>(s.mean), static_cast<const acc_t*>(s.invstd),
          static_cast<const param_t*>(s.params->weight_ptr()), static_cast<const param_t*>(s.params->bias_ptr()),
          static_cast<acc_t*>(s.scale), static_cast<acc_t*>(s.bias), static_cast<acc_t*>(s.shift), s.channels};
}

template <typename acc_t, typename param_t>
BackwardFinalizeArgs<acc_t, param_t> typed_args(const BackwardStep& s) {
  return {static_cast<const acc_t*>(s.invstd),   static_cast<const acc_t*>(s.scale),
          static_cast<const acc_t*>(s.sum_g),    static_cast<const acc_t*>(s.sum_g_xc),
          static_cast<param_t*>(s.grad_weight),  static_cast<param_t*>(s.grad_bias),
          static_cast<acc_t*>(s.coef_xc),        static_cast<acc_t*>(s.coef_const),
          static_cast<acc_t>(s.inv_count),       s.training,
          s.sums_are_xhat,                       s.channels};
}

// Each step's dtype classes, for dispatch_channel_types.
inline bool params_are_acc(const ForwardStep& s) { return s.params->is_acc; }
inline bool params_are_acc(const EvalStep& s) { return s.params->is_acc; }
inline bool params_are_acc(const PrepareStep& s) { return s.params->is_acc; }
inline bool params_are_acc(const BackwardStep& s) { return s.params_are_acc; }
inline bool running_is_acc(const ForwardStep& s) { return s.running_is_acc; }
inline bool running_is_acc(const EvalStep& s) { return s.running_is_acc; }
inline bool running_is_acc(const PrepareStep&) { return true; }
inline bool running_is_acc(const BackwardStep&) { return true; }

// Calls f(typed_args<acc_t, param_t[, running_t]>(step)) for the step's dtype classes; scalar_t
// is the backend's element type (at::Half on the CPU, __half on CUDA).
template <typename scalar_t, typename acc_t, typename Step, typename F>
void with_typed_args(const Step& step, F&& f) {
  dispatch_channel_types<scalar_t, acc_t>(params_are_acc(step), running_is_acc(step), [&](auto p, auto r) {
    using param_t = typename decltype(p)::type;
    using running_t = typename decltype(r)::type;
    if constexpr (std::is_same_v<Step, ForwardStep> || std::is_same_v<Step, EvalStep>)
      f(typed_args<acc_t, param_t, running_t>(step));
    else if constexpr (std::is_same_v<running_t, acc_t>)  // steps without running buffers
      f(typed_args<acc_t, param_t>(step));
  });
}

}  // namespace pyfusedbn
