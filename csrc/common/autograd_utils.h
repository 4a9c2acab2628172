// What the C++ autograd of the layer ops (batch_norm/autograd.cpp, group_norm/autograd.cpp)
// shares: optional-tensor conversions (saved variables hold undefined tensors for None) and typed
// handles to the ops they call through the dispatcher.
#pragma once

#include <torch/autograd.h>

namespace pyfusedbn {
namespace autograd_utils {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;

inline OptTensor defined_or_none(const Tensor& t) { return t.defined() ? OptTensor(t) : c10::nullopt; }
inline Tensor value_or_undefined(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }

template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace autograd_utils
}  // namespace pyfusedbn
