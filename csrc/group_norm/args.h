// GroupNorm's kernel arguments (torch-free: shared by the CPU and CUDA kernels).
//
// GroupNorm splits the C channels of each sample into `groups` runs of C / groups channels and
// normalises each (sample, group) over its channels and positions; InstanceNorm is groups == C
// and timm's LayerNorm2d is groups == 1 over an (N*H*W, C) view. The elementwise and backward
// passes reuse BatchNorm's argument structs (ApplyArgs, ReduceArgs, ElemtArgs) with coefficient
// and sum arrays of N * C values, indexed n * C + c, where BatchNorm's hold C values.
#pragma once

#include <stdint.h>

#include "../common/kernel_args.h"

namespace pyfusedbn {

template <typename scalar_t, typename acc_t>
struct GroupStatsArgs {
  const scalar_t* input;
  acc_t* mean;  // N * groups
  acc_t* var;   // N * groups, biased (divided by the group's element count)
  BnShape shape;
  int64_t groups;

  FBN_HOST_DEVICE int64_t channels_per_group() const { return shape.channels / groups; }
  // A group's values are one contiguous run when each (n, c) plane is (NCHW) or when there is one
  // position per sample (rows of C values); otherwise (channels_last) they are strided.
  FBN_HOST_DEVICE bool contiguous_groups() const { return !shape.channels_last || shape.spatial == 1; }
};

// The per-(sample, group) algebra's inputs (coefficients.h): statistics per (n, g), the
// affine parameters per channel (nullptr: weight 1, bias 0) and the sizes.
template <typename acc_t>
struct GroupCoefficientArgs {
  const acc_t* mean;  // N * groups
  const acc_t* rstd;  // N * groups
  const acc_t* weight;
  const acc_t* bias;
  int64_t batch;
  int64_t channels;
  int64_t groups;

  FBN_HOST_DEVICE int64_t channels_per_group() const { return channels / groups; }
};

// The forward's per-(sample, channel) arrays (N * C values each), carved from one workspace
// allocation: the apply pass's scale = weight * rstd and shift = bias - mean * scale.
constexpr int64_t kGroupForwardArrays = 2;
template <typename acc_t>
struct GroupForwardArrays {
  acc_t* scale;
  acc_t* shift;

  // From array(i), the i-th workspace array's pointer.
  template <typename ArrayAt>
  static GroupForwardArrays from(ArrayAt array) {
    return {array(0), array(1)};
  }
};

// The backward's per-(sample, channel) arrays, likewise from one workspace: the rebuild
// coefficients both passes read (mean, scale = weight * rstd, which is also the elementwise
// pass's coef_g, and bias), the reduction's sums, and the elementwise pass's other coefficients.
constexpr int64_t kGroupBackwardArrays = 7;
template <typename acc_t>
struct GroupBackwardArrays {
  acc_t* mean;
  acc_t* scale;
  acc_t* bias;
  acc_t* sum_g;
  acc_t* sum_g_xc;
  acc_t* coef_xc;
  acc_t* coef_const;

  template <typename ArrayAt>
  static GroupBackwardArrays from(ArrayAt array) {
    return {array(0), array(1), array(2), array(3), array(4), array(5), array(6)};
  }

  // The two passes' kernel arguments over these arrays (residual, grad_residual: nullptr when absent).
  template <typename scalar_t>
  ReduceArgs<scalar_t, acc_t> reduce_args(const scalar_t* grad_out, const scalar_t* saved, const scalar_t* residual,
                                          acc_t param, const BnShape& shape) const {
    return {grad_out, saved, residual, mean, scale, bias, sum_g, sum_g_xc, param, shape};
  }
  // coef_g = weight * rstd: the rebuild scale.
  template <typename scalar_t>
  ElemtArgs<scalar_t, acc_t> elemt_args(const scalar_t* grad_out, const scalar_t* saved, const scalar_t* residual,
                                        scalar_t* grad_input, scalar_t* grad_residual, acc_t param,
                                        const BnShape& shape) const {
    return {grad_out, saved,      residual,   mean,          scale, bias, scale,
            coef_xc,  coef_const, grad_input, grad_residual, param, shape};
  }
};

// One position per sample (spatial == 1: LayerNorm2d's (N*H*W, C) rows, or an (N, C) input):
// there the per-(sample, channel) arrays above would hold one value per element (LayerNorm2d's
// (64, 96, 56, 56) bf16: 154 MB forward, 539 MB backward for a 38.5 MB input), so the rows path
// keeps only per-(row, group) values and computes each element's coefficients from them as it
// goes (coefficients.h: the same formulas, so the same roundings).
FBN_HOST_DEVICE bool group_rows_layout(const BnShape& shape) { return shape.spatial == 1; }

// The rows backward sums the parameter gradients over parts of the rows, a fixed partition (the
// same on every run and for any thread count), each part's sums in double, then the parts in order.
constexpr int64_t kGroupRowsPerPart = 1024;
constexpr int64_t kGroupMaxRowParts = 256;
FBN_HOST_DEVICE int64_t group_rows_parts(int64_t rows) {
  const int64_t parts = (rows + kGroupRowsPerPart - 1) / kGroupRowsPerPart;
  return parts < 1 ? 1 : (parts > kGroupMaxRowParts ? kGroupMaxRowParts : parts);
}
FBN_HOST_DEVICE int64_t group_rows_per_part(int64_t rows, int64_t parts) { return (rows + parts - 1) / parts; }

// The rows path's inputs per (row, group) and per channel, and the backward's outputs per
// (row, group) and per part: its whole workspace is coef_xc, coef_const and partials.
template <typename acc_t>
struct GroupRowsCoefficients {
  const acc_t* mean;    // N * groups
  const acc_t* rstd;    // N * groups
  const acc_t* weight;  // C values or nullptr (1)
  const acc_t* bias;    // C values or nullptr (0)
  int64_t channels;
  int64_t groups;
  acc_t* coef_xc;     // backward: N * groups, written by the reduction for the elementwise pass
  acc_t* coef_const;  // backward: N * groups
  double* partials;   // backward: (part, c) pairs (weight, bias) of parameter-gradient sums
  int64_t parts;

  FBN_HOST_DEVICE int64_t group_of(int64_t n, int64_t c) const { return n * groups + c / (channels / groups); }
};

}  // namespace pyfusedbn
