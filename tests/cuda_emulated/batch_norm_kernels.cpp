// BatchNorm's CUDA launchers (csrc/cuda: launch_stats, launch_finalize, launch_apply,
// launch_backward_reduce, launch_backward_elemt) on the emulator, against float64 references
// written here: a training forward and backward and an eval forward and backward per case, in
// the four dtypes, planar / channels_last / rows, aligned and misaligned views, with and without
// residual, from the input or (invertible activations) from the output.
//   batch_norm_kernels [--order forward|reverse|random:SEED] [--sms N] [--occupancy K] [--filter TEXT]
#include <string>

#include "cuda/batch_norm_kernels.cuh"
#include "harness.h"

namespace {

using namespace harness;
namespace fbn = pyfusedbn;

struct Case {
  const char* name;
  int64_t N, C, S;
  bool channels_last;
  int offset;  // values the tensors start past an aligned address
};
const Case kCases[] = {
    {"nchw_2x3x5", 2, 3, 5, false, 0},      {"nchw_3x4x16", 3, 4, 16, false, 0},
    {"nchw_4x2x1024", 4, 2, 1024, false, 0}, {"nchw_offset_2x3x8", 2, 3, 8, false, 1},
    {"nhwc_2x5x9", 2, 5, 9, true, 0},        {"nhwc_4x16x6", 4, 16, 6, true, 0},
    {"nhwc_2x37x3", 2, 37, 3, true, 0},      {"nhwc_16x8x64", 16, 8, 64, true, 0},
    {"nhwc_offset_3x8x4", 3, 8, 4, true, 1}, {"rows_70x3", 70, 3, 1, true, 0},
    // Enough items that on 1 SM the partial slots follow the occupancy answer (up to 17 parts).
    {"nchw_1x2x4099", 1, 2, 4099, false, 0},
};

int64_t index_of(const Case& k, int64_t n, int64_t c, int64_t s) {
  return k.channels_last ? (n * k.S + s) * k.C + c : (n * k.C + c) * k.S + s;
}

template <typename scalar_t>
void run_case(const Case& k, const ActRef& act, bool residual, bool from_output, const Options& opt, Report& rep) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const std::string where = std::string(k.name) + " " + dtype_name<scalar_t> + " " + act.name +
                            (residual ? " residual" : "") + (from_output ? " from_output" : "");
  const int64_t N = k.N, C = k.C, S = k.S, numel = N * C * S, M = N * S;
  const fbn::BnShape shape{N, C, S, k.channels_last};
  const fbn::cuda::LaunchContext ctx{nullptr, opt.sms};
  const double eps = 1e-5, momentum = 0.1;
  Buffer<scalar_t> x(numel, k.offset), res(numel, k.offset), y(numel, k.offset), dy(numel, k.offset);
  Buffer<scalar_t> gi(numel, k.offset), gr(numel, k.offset);
  std::vector<double> xd(numel), resd(numel, 0), dyd(numel);
  for (int64_t i = 0; i < numel; ++i) {
    x[i] = from_double<scalar_t>(input_value(1, i) + 0.5);
    res[i] = from_double<scalar_t>(input_value(2, i));
    dy[i] = from_double<scalar_t>(input_value(3, i));
    xd[i] = to_double(x[i]);
    if (residual) resd[i] = to_double(res[i]);
    dyd[i] = to_double(dy[i]);
  }
  std::vector<acc_t> weight(C), bias(C), rm(C), rv(C);
  for (int64_t c = 0; c < C; ++c) {
    weight[c] = static_cast<acc_t>(0.5 + 0.25 * c);
    bias[c] = static_cast<acc_t>(0.1 * c - 0.2);
    rm[c] = static_cast<acc_t>(0.05 * c);
    rv[c] = static_cast<acc_t>(1 + 0.1 * c);
  }
  // float64 reference: statistics, forward, backward (training), running statistics.
  std::vector<double> mean(C, 0), var(C, 0), invstd(C), z(numel), yd(numel), sum_g(C, 0), sum_g_xhat(C, 0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t s = 0; s < S; ++s) mean[c] += xd[index_of(k, n, c, s)] / M;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t s = 0; s < S; ++s) var[c] += std::pow(xd[index_of(k, n, c, s)] - mean[c], 2) / M;
  for (int64_t c = 0; c < C; ++c) invstd[c] = 1 / std::sqrt(var[c] + eps);
  std::vector<double> g(numel), xhat(numel), gi_ref(numel), eval_gi(numel), eval_y(numel);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t s = 0; s < S; ++s) {
        const int64_t i = index_of(k, n, c, s);
        xhat[i] = (xd[i] - mean[c]) * invstd[c];
        z[i] = xhat[i] * weight[c] + bias[c] + resd[i];
        yd[i] = act.value(z[i]);
        g[i] = dyd[i] * act.grad(z[i]);
        sum_g[c] += g[i];
        sum_g_xhat[c] += g[i] * xhat[i];
      }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t s = 0; s < S; ++s) {
        const int64_t i = index_of(k, n, c, s);
        gi_ref[i] = weight[c] * invstd[c] * (g[i] - sum_g[c] / M - xhat[i] * sum_g_xhat[c] / M);
      }
  std::vector<double> rm_ref(C), rv_ref(C), mean_ref(mean), var_ref(var);
  for (int64_t c = 0; c < C; ++c) {
    rm_ref[c] = (1 - momentum) * rm[c] + momentum * mean[c];
    rv_ref[c] = (1 - momentum) * rv[c] + momentum * var[c] * M / (M > 1 ? M - 1 : 1);
  }

  // The kernels: statistics, finalize, apply.
  std::vector<acc_t> k_mean(C), k_var(C), k_invstd(C), k_scale(C), k_shift(C), k_bias(C);
  std::vector<acc_t> k_sum_g(C), k_sum_g_xc(C), k_gw(C), k_gb(C), k_coef_xc(C), k_coef_const(C);
  Buffer<acc_t> workspace(fbn::cuda::workspace_elements(shape, opt.sms));
  int64_t batches = 0;
  fbn::cuda::launch_stats<scalar_t, acc_t>({x.data(), k_mean.data(), k_var.data(), shape}, workspace.data(), ctx);
  rep.check_guard(where, "stats workspace", workspace);
  rep.check(where, "mean", k_mean.data(), mean_ref, tolerance<acc_t>);
  rep.check(where, "var", k_var.data(), var_ref, tolerance<acc_t>);
  const acc_t keep = static_cast<acc_t>(1 - momentum), mean_weight = static_cast<acc_t>(momentum);
  const acc_t var_weight = static_cast<acc_t>(momentum * M / (M > 1 ? M - 1 : 1));
  fbn::cuda::launch_finalize(fbn::ForwardFinalizeArgs<acc_t, acc_t, acc_t>{
      k_mean.data(), k_var.data(), weight.data(), bias.data(), rm.data(), rv.data(), k_invstd.data(),
      k_scale.data(), k_shift.data(), static_cast<acc_t>(eps), keep, mean_weight, var_weight, &batches, C}, ctx);
  rep.check(where, "invstd", k_invstd.data(), invstd, tolerance<acc_t>);
  rep.check(where, "running_mean", rm.data(), rm_ref, tolerance<acc_t>);
  rep.check(where, "running_var", rv.data(), rv_ref, tolerance<acc_t>);
  if (batches != 1) {
    ++rep.failures;
    std::printf("FAIL %s: num_batches_tracked %lld, expected 1\n", where.c_str(), static_cast<long long>(batches));
  }
  const fbn::ActKind kind = act.kind;
  const acc_t param = static_cast<acc_t>(act.param);
  fbn::cuda::launch_apply<scalar_t, acc_t>(
      {x.data(), residual ? res.data() : nullptr, k_scale.data(), k_shift.data(), y.data(), param, shape}, kind, ctx);
  rep.check(where, "output", y.data(), yd, tolerance<scalar_t>);
  rep.check_guard(where, "output", y);

  // Backward (training): prepare, reduce, finalize, elementwise.
  fbn::cuda::launch_finalize(fbn::PrepareArgs<acc_t, acc_t>{k_mean.data(), k_invstd.data(), weight.data(),
                                                            bias.data(), k_scale.data(), k_bias.data(), nullptr, C},
                             ctx);
  const scalar_t* saved = from_output ? y.data() : x.data();
  fbn::cuda::launch_backward_reduce<scalar_t, acc_t>(
      {dy.data(), saved, residual ? res.data() : nullptr, k_mean.data(), k_scale.data(), k_bias.data(),
       k_sum_g.data(), k_sum_g_xc.data(), param, shape},
      kind, from_output, workspace.data(), ctx);
  rep.check_guard(where, "backward workspace", workspace);
  fbn::cuda::launch_finalize(fbn::BackwardFinalizeArgs<acc_t, acc_t>{
      k_invstd.data(), k_scale.data(), k_sum_g.data(), k_sum_g_xc.data(), k_gw.data(), k_gb.data(),
      k_coef_xc.data(), k_coef_const.data(), static_cast<acc_t>(1.0 / M), true, false, C}, ctx);
  // Rebuilding z from a rounded output costs the output's rounding over the activation's slope.
  const double slack = from_output ? 8 : 1;
  rep.check(where, "grad_bias", k_gb.data(), sum_g, tolerance<scalar_t>, slack);
  rep.check(where, "grad_weight", k_gw.data(), sum_g_xhat, tolerance<scalar_t>, slack);
  fbn::cuda::launch_backward_elemt<scalar_t, acc_t>(
      {dy.data(), saved, residual ? res.data() : nullptr, k_mean.data(), k_scale.data(), k_bias.data(),
       k_scale.data(), k_coef_xc.data(), k_coef_const.data(), gi.data(), residual ? gr.data() : nullptr, param,
       shape},
      kind, from_output, ctx);
  rep.check(where, "grad_input", gi.data(), gi_ref, tolerance<scalar_t>, slack);
  if (residual) rep.check(where, "grad_residual", gr.data(), g, tolerance<scalar_t>, slack);
  rep.check_guard(where, "grad_input", gi);
  rep.check_guard(where, "grad_residual", gr);

  // Eval: statistics from the (updated) running buffers, forward and backward.
  fbn::cuda::launch_finalize(fbn::EvalFinalizeArgs<acc_t, acc_t, acc_t>{rm.data(), rv.data(), weight.data(),
                                                                        bias.data(), k_mean.data(), k_invstd.data(),
                                                                        k_scale.data(), k_shift.data(),
                                                                        static_cast<acc_t>(eps), C},
                             ctx);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t s = 0; s < S; ++s) {
        const int64_t i = index_of(k, n, c, s);
        const double r_invstd = 1 / std::sqrt(static_cast<double>(rv[c]) + eps);
        const double ze = (xd[i] - rm[c]) * r_invstd * weight[c] + bias[c] + resd[i];
        eval_y[i] = act.value(ze);
        eval_gi[i] = dyd[i] * act.grad(ze) * weight[c] * r_invstd;
      }
  fbn::cuda::launch_apply<scalar_t, acc_t>(
      {x.data(), residual ? res.data() : nullptr, k_scale.data(), k_shift.data(), y.data(), param, shape}, kind, ctx);
  rep.check(where, "eval output", y.data(), eval_y, tolerance<scalar_t>);
  fbn::cuda::launch_finalize(fbn::BackwardFinalizeArgs<acc_t, acc_t>{
      k_invstd.data(), k_scale.data(), nullptr, nullptr, nullptr, nullptr, k_coef_xc.data(), k_coef_const.data(),
      static_cast<acc_t>(1.0 / M), false, false, C}, ctx);
  fbn::cuda::launch_backward_elemt<scalar_t, acc_t>(
      {dy.data(), x.data(), residual ? res.data() : nullptr, k_mean.data(), k_scale.data(), bias.data(),
       k_scale.data(), k_coef_xc.data(), k_coef_const.data(), gi.data(), residual ? gr.data() : nullptr, param,
       shape},
      kind, false, ctx);
  rep.check(where, "eval grad_input", gi.data(), eval_gi, tolerance<scalar_t>);
}

struct Suite {
  template <typename scalar_t>
  static void run(const Options& opt, Report& rep) {
    for_each_selected<scalar_t>(kCases, opt, [&](const Case& k, const ActRef& act) {
      run_case<scalar_t>(k, act, false, false, opt, rep);
      if (act.act == Act::Silu || act.act == Act::LeakyRelu) run_case<scalar_t>(k, act, true, false, opt, rep);
      // ELU's inverse near -alpha turns a 16-bit output's rounding into a large error in z.
      constexpr bool k16 = sizeof(scalar_t) == 2;
      if (act.invertible && !(k16 && act.act == Act::Elu))
        run_case<scalar_t>(k, act, act.act == Act::LeakyRelu, true, opt, rep);
    });
  }
};

}  // namespace

int main(int argc, char** argv) { return harness::run_suite<Suite>(argc, argv, "batch_norm_kernels"); }
