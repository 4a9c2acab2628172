// GroupNorm's CUDA launchers (csrc/cuda: launch_group_stats, launch_group_apply,
// launch_group_backward_prepare, launch_group_backward_reduce, launch_group_backward_finalize,
// launch_group_backward_elemt, and the rows path's launch_group_rows_*) on the emulator, against float64 references written here: a
// forward and backward per case, in the four dtypes, NCHW, NHWC and LayerNorm2d rows
// (batch split into parts past 1024 samples), InstanceNorm groups, misaligned views, residual.
//   group_norm_kernels [--order forward|reverse|random:SEED] [--sms N] [--filter TEXT]
#include <string>

#include "cuda/group_norm_kernels.cuh"
#include "harness.h"

namespace {

using namespace harness;
namespace fbn = pyfusedbn;

struct Case {
  const char* name;
  int64_t N, C, S, G;
  bool channels_last;
  int offset;
  bool affine;
  bool large;  // 1100 blocks a launch: one dtype and activation per run is enough
};
const Case kCases[] = {
    {"nchw_2x6x5_g3", 2, 6, 5, 3, false, 0, true},
    {"nchw_3x8x16_g2", 3, 8, 16, 2, false, 0, true},
    {"nchw_1x2x2000_g1", 1, 2, 2000, 1, false, 0, true},
    {"nchw_offset_2x4x8_g2", 2, 4, 8, 2, false, 1, false},
    {"nhwc_2x6x5_g3", 2, 6, 5, 3, true, 0, true},
    {"nhwc_2x64x9_g4", 2, 64, 9, 4, true, 0, true},
    {"nhwc_instance_2x4x7_g4", 2, 4, 7, 4, true, 0, true},
    {"nhwc_offset_3x8x4_g2", 3, 8, 4, 2, true, 1, true},
    {"rows_1100x3_g1", 1100, 3, 1, 1, true, 0, true, true},
    {"rows_6x70_g2", 6, 70, 1, 2, true, 0, true},
    {"rows_offset_5x8_g1", 5, 8, 1, 1, true, 1, false},
    {"rows_1030x40_g1", 1030, 40, 1, 1, true, 0, true, true},
};

template <typename scalar_t>
void run_case(const Case& k, const ActRef& act, bool residual, const Options& opt, Report& rep) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const std::string where =
      std::string(k.name) + " " + dtype_name<scalar_t> + " " + act.name + (residual ? " residual" : "");
  const int64_t N = k.N, C = k.C, S = k.S, G = k.G, D = C / G, numel = N * C * S, NC = N * C;
  const fbn::BnShape shape{N, C, S, k.channels_last};
  const fbn::cuda::LaunchContext ctx{nullptr, opt.sms};
  const double eps = 1e-5;
  auto at = [&](int64_t n, int64_t c, int64_t s) { return k.channels_last ? (n * S + s) * C + c : (n * C + c) * S + s; };
  Buffer<scalar_t> x(numel, k.offset), res(numel, k.offset), y(numel, k.offset), dy(numel, k.offset);
  Buffer<scalar_t> gi(numel, k.offset), gr(numel, k.offset);
  std::vector<double> xd(numel), resd(numel, 0), dyd(numel);
  for (int64_t i = 0; i < numel; ++i) {
    x[i] = from_double<scalar_t>(input_value(4, i) * 1.5 - 0.3);
    res[i] = from_double<scalar_t>(input_value(5, i));
    dy[i] = from_double<scalar_t>(input_value(6, i));
    xd[i] = to_double(x[i]);
    if (residual) resd[i] = to_double(res[i]);
    dyd[i] = to_double(dy[i]);
  }
  std::vector<acc_t> weight(C), bias(C);
  for (int64_t c = 0; c < C; ++c) {
    weight[c] = static_cast<acc_t>(k.affine ? 0.75 + 0.125 * (c % 5) : 1);
    bias[c] = static_cast<acc_t>(k.affine ? 0.05 * (c % 7) - 0.1 : 0);
  }
  const acc_t* w_ptr = k.affine ? weight.data() : nullptr;
  const acc_t* b_ptr = k.affine ? bias.data() : nullptr;

  // float64 reference.
  std::vector<double> mean(N * G, 0), rstd(N * G), var(N * G, 0), yd(numel), g(numel), xhat(numel), gi_ref(numel);
  std::vector<double> gw(C, 0), gb(C, 0);
  const double count = static_cast<double>(D * S);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t gr_ = 0; gr_ < G; ++gr_) {
      const int64_t ng = n * G + gr_;
      for (int64_t c = gr_ * D; c < (gr_ + 1) * D; ++c)
        for (int64_t s = 0; s < S; ++s) mean[ng] += xd[at(n, c, s)] / count;
      for (int64_t c = gr_ * D; c < (gr_ + 1) * D; ++c)
        for (int64_t s = 0; s < S; ++s) var[ng] += std::pow(xd[at(n, c, s)] - mean[ng], 2) / count;
      rstd[ng] = 1 / std::sqrt(var[ng] + eps);
      double sum_dxhat = 0, sum_dxhat_xhat = 0;
      for (int64_t c = gr_ * D; c < (gr_ + 1) * D; ++c)
        for (int64_t s = 0; s < S; ++s) {
          const int64_t i = at(n, c, s);
          xhat[i] = (xd[i] - mean[ng]) * rstd[ng];
          const double z = xhat[i] * weight[c] + bias[c] + resd[i];
          yd[i] = act.value(z);
          g[i] = dyd[i] * act.grad(z);
          gw[c] += g[i] * xhat[i];
          gb[c] += g[i];
          sum_dxhat += g[i] * weight[c];
          sum_dxhat_xhat += g[i] * weight[c] * xhat[i];
        }
      for (int64_t c = gr_ * D; c < (gr_ + 1) * D; ++c)
        for (int64_t s = 0; s < S; ++s) {
          const int64_t i = at(n, c, s);
          gi_ref[i] = rstd[ng] * (g[i] * weight[c] - sum_dxhat / count - xhat[i] * sum_dxhat_xhat / count);
        }
    }

  // Forward.
  std::vector<acc_t> k_mean(N * G), k_var(N * G), k_rstd(N * G), scale(NC), shift(NC);
  const fbn::GroupStatsArgs<scalar_t, acc_t> stats{x.data(), k_mean.data(), k_var.data(), shape, G};
  fbn::cuda::launch_group_stats(stats, fbn::cuda::GroupForwardOutputs<acc_t>{w_ptr, b_ptr, eps, k_rstd.data(),
                                                                           {scale.data(), shift.data()}},
                                ctx);
  rep.check(where, "mean", k_mean.data(), mean, tolerance<acc_t>);
  rep.check(where, "rstd", k_rstd.data(), rstd, tolerance<acc_t>);
  const fbn::ActKind kind = act.kind;
  const acc_t param = static_cast<acc_t>(act.param);
  fbn::cuda::launch_group_apply<scalar_t, acc_t>(
      {x.data(), residual ? res.data() : nullptr, scale.data(), shift.data(), y.data(), param, shape}, kind, ctx);
  rep.check(where, "output", y.data(), yd, tolerance<scalar_t>);
  rep.check_guard(where, "output", y);

  // Backward.
  std::vector<std::vector<acc_t>> arrays(fbn::kGroupBackwardArrays, std::vector<acc_t>(NC));
  const auto arr = fbn::GroupBackwardArrays<acc_t>::from([&](int64_t i) { return arrays[i].data(); });
  const fbn::GroupCoefficientArgs<acc_t> coefs{k_mean.data(), k_rstd.data(), w_ptr, b_ptr, N, C, G};
  fbn::cuda::launch_group_backward_prepare(coefs, arr, ctx);
  const scalar_t* residual_ptr = residual ? res.data() : nullptr;
  fbn::cuda::launch_group_backward_reduce(arr.reduce_args(dy.data(), x.data(), residual_ptr, param, shape), kind,
                                          ctx);
  std::vector<acc_t> k_gw(C), k_gb(C);
  const int64_t parts = fbn::cuda::group_param_grad_parts(N);
  Buffer<double> partials(parts > 1 ? 2 * parts * C : 0);
  fbn::cuda::launch_group_backward_finalize(coefs, arr, count, k_gw.data(), k_gb.data(),
                                            parts > 1 ? partials.data() : nullptr, ctx);
  rep.check_guard(where, "partials", partials);
  rep.check(where, "grad_weight", k_gw.data(), gw, tolerance<scalar_t>);
  rep.check(where, "grad_bias", k_gb.data(), gb, tolerance<scalar_t>);
  fbn::cuda::launch_group_backward_elemt(
      arr.elemt_args(dy.data(), x.data(), residual_ptr, gi.data(), residual ? gr.data() : nullptr, param, shape),
      kind, ctx);
  rep.check(where, "grad_input", gi.data(), gi_ref, tolerance<scalar_t>);
  if (residual) rep.check(where, "grad_residual", gr.data(), g, tolerance<scalar_t>);
  rep.check_guard(where, "grad_input", gi);
  rep.check_guard(where, "grad_residual", gr);
  if (!fbn::group_rows_layout(shape)) return;

  // The rows path's launchers (one position per sample: no per-(sample, channel) arrays) against
  // the same references.
  const std::string rows = where + " rows_path";
  Buffer<scalar_t> y_rows(numel, k.offset), gi_rows(numel, k.offset), gr_rows(numel, k.offset);
  std::vector<acc_t> r_mean(N * G), r_var(N * G), r_rstd(N * G), r_coefs(2 * N * G), r_gw(C), r_gb(C);
  fbn::cuda::launch_group_stats(fbn::GroupStatsArgs<scalar_t, acc_t>{x.data(), r_mean.data(), r_var.data(), shape, G},
                                fbn::cuda::GroupForwardOutputs<acc_t>{w_ptr, b_ptr, eps, r_rstd.data(), {nullptr, nullptr}},
                                ctx);
  rep.check(rows, "mean", r_mean.data(), mean, tolerance<acc_t>);
  rep.check(rows, "rstd", r_rstd.data(), rstd, tolerance<acc_t>);
  const int64_t row_parts = fbn::group_rows_parts(N);
  Buffer<double> row_partials(2 * row_parts * C);
  const fbn::GroupRowsCoefficients<acc_t> rc{r_mean.data(), r_rstd.data(), w_ptr, b_ptr, C, G,
                                             r_coefs.data(), r_coefs.data() + N * G, row_partials.data(), row_parts};
  fbn::cuda::launch_group_rows_apply<scalar_t, acc_t>(
      {x.data(), residual ? res.data() : nullptr, nullptr, nullptr, y_rows.data(), param, shape}, rc, kind, ctx);
  rep.check(rows, "output", y_rows.data(), yd, tolerance<scalar_t>);
  rep.check_guard(rows, "output", y_rows);
  fbn::cuda::launch_group_rows_backward_reduce<scalar_t, acc_t>(
      {dy.data(), x.data(), residual_ptr, nullptr, nullptr, nullptr, nullptr, nullptr, param, shape}, rc, count, kind,
      ctx);
  rep.check_guard(rows, "partials", row_partials);
  fbn::cuda::launch_group_rows_backward_finalize(rc, r_gw.data(), r_gb.data(), ctx);
  rep.check(rows, "grad_weight", r_gw.data(), gw, tolerance<scalar_t>);
  rep.check(rows, "grad_bias", r_gb.data(), gb, tolerance<scalar_t>);
  fbn::cuda::launch_group_rows_backward_elemt<scalar_t, acc_t>(
      {dy.data(), x.data(), residual_ptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, gi_rows.data(),
       residual ? gr_rows.data() : nullptr, param, shape},
      rc, kind, ctx);
  rep.check(rows, "grad_input", gi_rows.data(), gi_ref, tolerance<scalar_t>);
  if (residual) rep.check(rows, "grad_residual", gr_rows.data(), g, tolerance<scalar_t>);
  rep.check_guard(rows, "grad_input", gi_rows);
  rep.check_guard(rows, "grad_residual", gr_rows);
}

struct Suite {
  template <typename scalar_t>
  static void run(const Options& opt, Report& rep) {
    for_each_selected<scalar_t>(kCases, opt, [&](const Case& k, const ActRef& act) {
      if (k.large) {
        if (act.act == Act::Silu && !std::is_same_v<scalar_t, double>) run_case<scalar_t>(k, act, true, opt, rep);
        return;
      }
      run_case<scalar_t>(k, act, false, opt, rep);
      if (act.act == Act::Silu) run_case<scalar_t>(k, act, true, opt, rep);
    });
  }
};

}  // namespace

int main(int argc, char** argv) { return harness::run_suite<Suite>(argc, argv, "group_norm_kernels"); }
