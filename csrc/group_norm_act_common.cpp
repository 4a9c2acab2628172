// Device-independent pieces of the GroupNorm ops: argument checks and per-group algebra.
#include "group_norm_act_ops.h"

namespace pyfusedbn {

void check_num_groups(const Tensor& input, int64_t num_groups, const char* op) {
  TORCH_CHECK_VALUE(num_groups > 0, op, ": num_groups must be positive, got ", num_groups);
  // torch's F.group_norm raises RuntimeError for this, with the same facts.
  TORCH_CHECK(input.size(1) % num_groups == 0, op,
              ": expected the number of channels in input to be divisible by num_groups, but got "
              "input of shape ", input.sizes(), " and num_groups=", num_groups);
}

void check_per_group(const Tensor& t, const char* name, const Tensor& input, int64_t num_groups,
                     const char* op) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == input.size(0) && t.size(1) == num_groups, op, ": ",
                    name, " must have shape (", input.size(0), ", ", num_groups,
                    ") (one value per sample and group), got ", t.sizes());
  TORCH_CHECK(t.device() == input.device(), op, ": ", name, " is on ", t.device(),
              " but input is on ", input.device(), "; expected all tensors on one device");
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", name,
                   " must be a floating-point tensor, got ", t.scalar_type());
}

Tensor expand_per_group(const Tensor& per_group, int64_t channels) {
  const int64_t N = per_group.size(0), G = per_group.size(1);
  return per_group.reshape({N, G, 1}).expand({N, G, channels / G}).reshape({N * channels}).contiguous();
}

Tensor repeat_per_sample(const OptTensor& per_channel, int64_t batch, int64_t channels, double fill,
                         at::ScalarType acc, const Tensor& like) {
  if (!per_channel.has_value()) return at::full({batch * channels}, fill, like.options().dtype(acc));
  return per_channel->to(acc).reshape({1, channels}).expand({batch, channels}).reshape({batch * channels})
      .contiguous();
}

}  // namespace pyfusedbn
