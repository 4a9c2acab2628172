// Runtime flags to kernel template parameters, shared by the CPU and CUDA backends (torch-free:
// nvcc includes it too). Kernels are instantiated per activation, with/without residual, and
// (backward) reading x or the output y, so their inner loops carry no runtime branches.
#pragma once

#include <type_traits>

#include "activations.h"

namespace pyfusedbn {

// Calls f(Act{}, bool_constant<has_residual>).
template <typename F>
void dispatch_act_residual(ActKind act, bool has_residual, F&& f) {
  dispatch_activation(act, [&](auto activation) {
    if (has_residual) f(activation, std::true_type{});
    else f(activation, std::false_type{});
  });
}

// Calls f(Act{}, bool_constant<has_residual>, bool_constant<from_output>). The from-output
// variants exist only for invertible activations (the ops have already refused the others).
template <typename F>
void dispatch_backward(ActKind act, bool has_residual, bool from_output, F&& f) {
  dispatch_act_residual(act, has_residual, [&](auto activation, auto has_res) {
    if constexpr (decltype(activation)::kInvertible) {
      if (from_output) {
        f(activation, has_res, std::true_type{});
        return;
      }
    }
    f(activation, has_res, std::false_type{});
  });
}

}  // namespace pyfusedbn
