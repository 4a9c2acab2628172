// What every op checks and lays out before its kernels run, whatever the norm: the activation
// name, the input's rank, dtype and memory layout, per-channel and input-shaped arguments, eps,
// and the accumulate-type views of per-channel or per-group tensors. Definitions: checks.cpp.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <string>

#include "activations.h"
#include "kernel_args.h"

namespace pyfusedbn {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;

// Accumulate dtype of the kernels and of per-channel results: float32 for half, bfloat16 and
// float32 input, float64 for float64 input.
inline at::ScalarType acc_type_of(const Tensor& t) { return at::toOpMathType(t.scalar_type()); }

// A per-channel or per-group tensor given to an op (mean, invstd, rstd, mean_g, weight, ...) in
// the accumulate type, contiguous: the tensor itself when it already is (no host op), else a
// converted copy.
Tensor as_acc(const Tensor& t, const Tensor& input);

ActKind parse_activation(const std::string& name);

// Rank 2 to 5 and a floating dtype the kernels take.
void check_input(const Tensor& input, const char* op);

// Input layout the kernels accept: contiguous in torch's suggested memory format.
struct LaidOut {
  Tensor input;
  at::MemoryFormat memory_format;
  BnShape shape;
};
LaidOut lay_out_input(const Tensor& input, const char* op);
// An uninitialised tensor shaped and laid out as the kernels' input (every element is written).
Tensor empty_like_input(const LaidOut& x);

// Per-channel tensor (weight, bias, running stats, saved mean/invstd): C values on input's device.
void check_per_channel(const OptTensor& t, const char* name, const Tensor& input, const char* op);
// Residual and grad_out: same shape, dtype and device as input; returned in input's layout.
Tensor lay_out_like(const Tensor& t, const char* name, const LaidOut& x, const char* op);
OptTensor lay_out_like(const OptTensor& t, const char* name, const LaidOut& x, const char* op);

// eps and momentum finite and >= 0 (an op without momentum passes 0).
void check_eps_momentum(double eps, double momentum, const char* op);

}  // namespace pyfusedbn
