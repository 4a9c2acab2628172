// GroupNorm's statistics-pass arguments (torch-free: shared by the CPU and CUDA kernels).
//
// GroupNorm splits the C channels of each sample into `groups` runs of C / groups channels and
// normalises each (sample, group) over its channels and positions; InstanceNorm is groups == C
// and timm's LayerNorm2d is groups == 1 over an (N*H*W, C) view. The elementwise and backward
// passes reuse BatchNorm's argument structs (ApplyArgs, ReduceArgs, ElemtArgs) with coefficient
// and sum arrays of N * C values, indexed n * C + c, where BatchNorm's hold C values.
#pragma once

#include <stdint.h>

#include "kernel_args.h"

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

}  // namespace pyfusedbn
