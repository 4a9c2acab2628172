// Device-independent pieces of the GroupNorm ops: argument checks and per-group algebra.
#include "group_norm_act_ops.h"

#include <ATen/Dispatch.h>

#include "group_coefficients.h"

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

namespace {

// t as contiguous acc values, dispatching no op when it already is (the common case).
Tensor as_acc_contiguous(const Tensor& t, at::ScalarType acc) {
  return t.scalar_type() == acc ? t.contiguous() : t.to(acc).contiguous();
}

// weight / bias as contiguous acc_t values (or undefined), for the CPU loops.
Tensor acc_values(const OptTensor& t, at::ScalarType acc) {
  return t.has_value() ? as_acc_contiguous(*t, acc) : Tensor();
}

template <typename acc_t>
const acc_t* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<acc_t>() : nullptr;
}

}  // namespace

GroupForwardCoefficients group_forward_coefficients(const Tensor& mean, const Tensor& var, double eps,
                                                    const OptTensor& weight, const OptTensor& bias,
                                                    int64_t channels) {
  const int64_t N = mean.size(0), G = mean.size(1), C = channels;
  const auto acc = mean.scalar_type();
  if (!mean.is_cpu()) {
    Tensor rstd = (var + eps).rsqrt_();
    const Tensor rstd_nc = expand_per_group(rstd, C);
    Tensor scale = (rstd_nc * repeat_per_sample(weight, N, C, 1.0, acc, rstd)).contiguous();
    Tensor shift = at::addcmul(repeat_per_sample(bias, N, C, 0.0, acc, rstd), expand_per_group(mean, C), scale, -1);
    return {rstd, scale, shift};
  }
  GroupForwardCoefficients out{at::empty({N, G}, mean.options()), at::empty({N * C}, mean.options()),
                               at::empty({N * C}, mean.options())};
  const Tensor w = acc_values(weight, acc), b = acc_values(bias, acc);
  AT_DISPATCH_FLOATING_TYPES(acc, "group_forward_coefficients", [&] {
    group_forward_coefficients(mean.data_ptr<scalar_t>(), var.data_ptr<scalar_t>(), eps, ptr_or_null<scalar_t>(w),
                               ptr_or_null<scalar_t>(b), N, C, G, out.rstd.data_ptr<scalar_t>(),
                               out.scale.data_ptr<scalar_t>(), out.shift.data_ptr<scalar_t>());
  });
  return out;
}

BackwardCoefficients group_backward_coefficients(const Tensor& mean, const Tensor& rstd, const OptTensor& weight,
                                                 const OptTensor& bias, int64_t channels) {
  const int64_t N = mean.size(0), G = mean.size(1), C = channels;
  const auto acc = rstd.scalar_type();
  if (!mean.is_cpu()) {
    return {expand_per_group(mean.to(acc), C),
            (expand_per_group(rstd, C) * repeat_per_sample(weight, N, C, 1.0, acc, rstd)).contiguous(),
            repeat_per_sample(bias, N, C, 0.0, acc, rstd), Tensor()};
  }
  const Tensor mean_acc = as_acc_contiguous(mean, acc), rstd_c = rstd.contiguous();
  BackwardCoefficients k{at::empty({N * C}, rstd.options()), at::empty({N * C}, rstd.options()),
                         at::empty({N * C}, rstd.options()), Tensor()};
  const Tensor w = acc_values(weight, acc), b = acc_values(bias, acc);
  AT_DISPATCH_FLOATING_TYPES(acc, "group_backward_coefficients", [&] {
    group_backward_prepare(mean_acc.data_ptr<scalar_t>(), rstd_c.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(w),
                           ptr_or_null<scalar_t>(b), N, C, G, k.mean.data_ptr<scalar_t>(),
                           k.scale.data_ptr<scalar_t>(), k.bias.data_ptr<scalar_t>());
  });
  return k;
}

GroupBackwardFinal group_backward_finalize(const Tensor& sum_g, const Tensor& sum_g_xc, const Tensor& rstd,
                                           const OptTensor& weight, int64_t channels, double count) {
  const int64_t N = rstd.size(0), G = rstd.size(1), C = channels, D = C / G;
  const auto acc = rstd.scalar_type();
  if (!rstd.is_cpu()) {
    // With dxhat = g * weight over a group of `count` elements,
    //   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    //      = g * (weight * rstd) + xc * (-rstd^3 * B / count) + (-rstd * A / count),
    // A = sum(weight * sum_g), B = sum(weight * sum_g_xc) over the group's channels.
    const Tensor weight_nc = repeat_per_sample(weight, N, C, 1.0, acc, rstd);
    const Tensor sum_dxhat = (sum_g * weight_nc).view({N, G, D}).sum(2);
    const Tensor sum_dxhat_xc = (sum_g_xc * weight_nc).view({N, G, D}).sum(2);
    return {(sum_g_xc * expand_per_group(rstd, C)).view({N, C}).sum(0), sum_g.view({N, C}).sum(0),
            expand_per_group(-rstd.pow(3) * sum_dxhat_xc / count, C), expand_per_group(-rstd * sum_dxhat / count, C)};
  }
  const Tensor rstd_c = rstd.contiguous(), w = acc_values(weight, acc);
  GroupBackwardFinal out{at::empty({C}, rstd.options()), at::empty({C}, rstd.options()),
                         at::empty({N * C}, rstd.options()), at::empty({N * C}, rstd.options())};
  AT_DISPATCH_FLOATING_TYPES(acc, "group_backward_finalize", [&] {
    group_backward_finalize(sum_g.data_ptr<scalar_t>(), sum_g_xc.data_ptr<scalar_t>(), rstd_c.data_ptr<scalar_t>(),
                            ptr_or_null<scalar_t>(w), N, C, G, count, out.grad_weight.data_ptr<scalar_t>(),
                            out.grad_bias.data_ptr<scalar_t>(), out.coef_xc.data_ptr<scalar_t>(),
                            out.coef_const.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace pyfusedbn
