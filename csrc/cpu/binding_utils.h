// What the CPU bindings (batch_norm_binding.cpp, group_norm_binding.cpp) share: raw pointers of optional
// tensors and the floating-point dtype dispatch (../common/dtype_dispatch.h).
#pragma once

#include <ATen/ATen.h>

#include "../common/dtype_dispatch.h"

namespace pyfusedbn {
namespace cpu_binding {

template <typename scalar_t>
const scalar_t* ptr_or_null(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<scalar_t>() : nullptr;
}

}  // namespace cpu_binding
}  // namespace pyfusedbn
