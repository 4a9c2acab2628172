// BatchNorm's per-channel finalize launches (csrc/cuda: launch_finalize, one per step) in every
// (accumulate, parameter, running buffer) type combination the binding dispatches to: float16 /
// bfloat16 parameters and running buffers included, without affine parameters, without running
// statistics, without num_batches_tracked, training and eval, sums or given means (the
// synchronised BatchNorm). Against float64 references written here, 300 channels (two blocks).
//   finalize_kernels [--order ...] [--sms N]
#include <string>

#include "cuda/batch_norm_kernels.cuh"
#include "harness.h"

namespace {

using namespace harness;
namespace fbn = pyfusedbn;
constexpr int64_t C = 300;

template <typename T>
std::vector<T> values(uint64_t seed, double lo, double hi) {
  std::vector<T> out(C);
  for (int64_t c = 0; c < C; ++c) out[c] = from_double<T>(lo + (hi - lo) * (input_value(seed, c) + 2) / 4);
  return out;
}
template <typename T>
std::vector<double> as_double(const std::vector<T>& v) {
  std::vector<double> out;
  for (const T& x : v) out.push_back(to_double(x));
  return out;
}

// One combination: forward finalize, eval finalize, prepare and backward finalize.
template <typename acc_t, typename param_t, typename running_t>
void run_types(bool affine, bool running, const Options& opt, Report& rep) {
  const std::string where = std::string("acc ") + dtype_name<acc_t> + " params " + dtype_name<param_t> +
                            " running " + dtype_name<running_t> + (affine ? "" : " no-affine") +
                            (running ? "" : " no-running");
  const fbn::cuda::LaunchContext ctx{nullptr, opt.sms};
  const double eps = 1e-3, keep = 0.75, mean_weight = 0.25, var_weight = 0.26;
  const auto mean = values<acc_t>(1, -1, 1), var = values<acc_t>(2, 0.1, 3);
  const auto weight = values<param_t>(3, 0.5, 1.5), bias = values<param_t>(4, -0.5, 0.5);
  auto rm = values<running_t>(5, -0.2, 0.2), rv = values<running_t>(6, 0.5, 2);
  const auto rm0 = as_double(rm), rv0 = as_double(rv);
  const param_t* w = affine ? weight.data() : nullptr;
  const param_t* b = affine ? bias.data() : nullptr;
  std::vector<double> invstd(C), scale(C), shift(C), rm_ref(rm0), rv_ref(rv0), eval_invstd(C), eval_scale(C),
      eval_shift(C);
  for (int64_t c = 0; c < C; ++c) {
    const double wc = affine ? to_double(weight[c]) : 1, bc = affine ? to_double(bias[c]) : 0;
    invstd[c] = 1 / std::sqrt(to_double(var[c]) + eps);
    scale[c] = wc * invstd[c];
    shift[c] = bc - to_double(mean[c]) * scale[c];
    if (running) {
      rm_ref[c] = rm0[c] * keep + to_double(mean[c]) * mean_weight;
      rv_ref[c] = rv0[c] * keep + to_double(var[c]) * var_weight;
    }
    eval_invstd[c] = 1 / std::sqrt(rv_ref[c] + eps);
    eval_scale[c] = wc * eval_invstd[c];
    eval_shift[c] = bc - rm_ref[c] * eval_scale[c];
  }
  std::vector<acc_t> k_invstd(C), k_scale(C), k_shift(C), k_mean(C), k_bias(C);
  int64_t batches = 41;
  fbn::cuda::launch_finalize(
      fbn::ForwardFinalizeArgs<acc_t, param_t, running_t>{
          mean.data(), var.data(), w, b, running ? rm.data() : nullptr, running ? rv.data() : nullptr,
          k_invstd.data(), k_scale.data(), k_shift.data(), static_cast<acc_t>(eps), static_cast<acc_t>(keep),
          static_cast<acc_t>(mean_weight), static_cast<acc_t>(var_weight), running ? &batches : nullptr, C},
      ctx);
  rep.check(where, "invstd", k_invstd.data(), invstd, tolerance<acc_t>);
  rep.check(where, "scale", k_scale.data(), scale, tolerance<acc_t>);
  rep.check(where, "shift", k_shift.data(), shift, tolerance<acc_t>);
  rep.check(where, "running_mean", rm.data(), rm_ref, tolerance<running_t>);
  rep.check(where, "running_var", rv.data(), rv_ref, tolerance<running_t>);
  if (batches != (running ? 42 : 41)) {
    ++rep.failures;
    std::printf("FAIL %s: num_batches_tracked %lld\n", where.c_str(), static_cast<long long>(batches));
  }
  const std::vector<acc_t> train_invstd = k_invstd;
  fbn::cuda::launch_finalize(fbn::EvalFinalizeArgs<acc_t, param_t, running_t>{
      rm.data(), rv.data(), w, b, k_mean.data(), k_invstd.data(), k_scale.data(), k_shift.data(),
      static_cast<acc_t>(eps), C}, ctx);
  rep.check(where, "eval mean", k_mean.data(), as_double(rm), tolerance<acc_t>);
  rep.check(where, "eval invstd", k_invstd.data(), eval_invstd, tolerance<running_t>);
  rep.check(where, "eval scale", k_scale.data(), eval_scale, tolerance<running_t>);
  rep.check(where, "eval shift", k_shift.data(), eval_shift, tolerance<running_t>);
  // Prepare from the training statistics (bias_acc and shift wanted).
  fbn::cuda::launch_finalize(fbn::PrepareArgs<acc_t, param_t>{mean.data(), train_invstd.data(), w, b,
                                                              k_scale.data(), k_bias.data(), k_shift.data(), C},
                             ctx);
  rep.check(where, "prepare scale", k_scale.data(), scale, tolerance<acc_t>);
  rep.check(where, "prepare shift", k_shift.data(), shift, tolerance<acc_t>);
  // Backward finalize: from sums, from given means (sums_are_xhat), without sums, eval.
  const auto sum_g = values<acc_t>(7, -5, 5), sum_g_xc = values<acc_t>(8, -5, 5);
  const double inv_count = 1.0 / 37;
  for (int mode = 0; mode < 4; ++mode) {
    const bool given_means = mode == 1, no_sums = mode == 2, training = mode != 3;
    std::vector<param_t> gw(C), gb(C);
    std::vector<acc_t> coef_xc(C), coef_const(C);
    fbn::cuda::launch_finalize(
        fbn::BackwardFinalizeArgs<acc_t, param_t>{
            train_invstd.data(), k_scale.data(), no_sums ? nullptr : sum_g.data(), sum_g_xc.data(), gw.data(),
            gb.data(), coef_xc.data(), coef_const.data(), static_cast<acc_t>(given_means ? 1 : inv_count),
            training, given_means, C},
        ctx);
    std::vector<double> gw_ref(C), gb_ref(C), xc_ref(C), const_ref(C);
    for (int64_t c = 0; c < C; ++c) {
      const double sg = no_sums ? 0 : to_double(sum_g[c]);
      const double sgx = no_sums ? 0 : given_means ? to_double(sum_g_xc[c]) : to_double(sum_g_xc[c]) * invstd[c];
      const double count_scale = given_means ? 1 : inv_count;
      gw_ref[c] = sgx;
      gb_ref[c] = sg;
      xc_ref[c] = training ? -scale[c] * invstd[c] * sgx * count_scale : 0;
      const_ref[c] = training ? -scale[c] * sg * count_scale : 0;
    }
    const std::string w_mode = where + " backward mode " + std::to_string(mode);
    rep.check(w_mode, "grad_weight", gw.data(), gw_ref, tolerance<param_t>);
    rep.check(w_mode, "grad_bias", gb.data(), gb_ref, tolerance<param_t>);
    rep.check(w_mode, "coef_xc", coef_xc.data(), xc_ref, tolerance<acc_t>);
    rep.check(w_mode, "coef_const", coef_const.data(), const_ref, tolerance<acc_t>);
  }
}

template <typename acc_t, typename param_t, typename running_t>
void run_flags(const Options& opt, Report& rep) {
  for (bool affine : {true, false})
    for (bool running : {true, false}) run_types<acc_t, param_t, running_t>(affine, running, opt, rep);
}

struct Suite {
  template <typename scalar_t>
  static void run(const Options& opt, Report& rep) {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    run_flags<acc_t, acc_t, acc_t>(opt, rep);
    if constexpr (sizeof(scalar_t) == 2) {  // the input's type for parameters and/or running buffers
      run_flags<acc_t, acc_t, scalar_t>(opt, rep);
      run_flags<acc_t, scalar_t, acc_t>(opt, rep);
      run_flags<acc_t, scalar_t, scalar_t>(opt, rep);
    }
  }
};

}  // namespace

int main(int argc, char** argv) { return harness::run_suite<Suite>(argc, argv, "finalize_kernels"); }
