// Elementwise passes on the GPU: the forward (normalise + affine + residual + activation) and
// the backward's grad_input / grad_residual pass. Both layouts use the grids of
// launch_geometry (device_utils.cuh); each thread loads its channel coefficients once, then
// strides over rows (channels_last: kVec channels of a row per access) or over samples and
// plane positions (planar: kVec positions of one plane per access).
#include "batch_norm_act_kernels.cuh"
#include "device_utils.cuh"

namespace pyfusedbn {
namespace cuda {
namespace {

template <typename Act, bool kResidual, int kVec, typename scalar_t, typename acc_t>
__device__ __forceinline__ void apply_vector(const ApplyArgs<scalar_t, acc_t>& a, int64_t i,
                                             const acc_t (&scale)[kVec], const acc_t (&shift)[kVec]) {
  acc_t x[kVec], residual[kVec] = {}, out[kVec];
  load_acc<kVec>(a.input + i, x);
  if constexpr (kResidual) load_acc<kVec>(a.residual + i, residual);
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    acc_t z = x[k] * scale[k] + shift[k];
    if constexpr (kResidual) z += residual[k];
    out[k] = Act::value(z, a.activation_param);
  }
  store_acc<kVec>(a.output + i, out);
}

// The backward's per-channel coefficients for a thread's lanes.
template <typename acc_t, int kVec>
struct ElemtCoefs {
  RebuildCoefs<acc_t, kVec> rebuild;
  acc_t g[kVec], xc[kVec], constant[kVec];

  template <typename scalar_t>
  __device__ __forceinline__ static ElemtCoefs load(const ElemtArgs<scalar_t, acc_t>& a, int64_t c0,
                                                    int channel_step) {
    ElemtCoefs k_c;
    k_c.rebuild = RebuildCoefs<acc_t, kVec>::load(a.mean, a.scale, a.bias, c0, channel_step);
    load_per_lane<kVec>(a.coef_g, c0, channel_step, k_c.g);
    load_per_lane<kVec>(a.coef_xc, c0, channel_step, k_c.xc);
    load_per_lane<kVec>(a.coef_const, c0, channel_step, k_c.constant);
    return k_c;
  }
};

template <typename Act, bool kResidual, bool kFromOutput, int kVec, typename scalar_t, typename acc_t>
__device__ __forceinline__ void elemt_vector(const ElemtArgs<scalar_t, acc_t>& a, int64_t i,
                                             const ElemtCoefs<acc_t, kVec>& k_c) {
  acc_t g[kVec], xc[kVec], grad_input[kVec];
  backward_terms<Act, kResidual, kFromOutput>(a, i, k_c.rebuild, g, xc);
#pragma unroll
  for (int k = 0; k < kVec; ++k) grad_input[k] = g[k] * k_c.g[k] + xc[k] * k_c.xc[k] + k_c.constant[k];
  store_acc<kVec>(a.grad_input + i, grad_input);
  if constexpr (kResidual) store_acc<kVec>(a.grad_residual + i, g);
}

// Walks a thread's element offsets: channels_last rows (channel vector fixed), or planar
// samples x plane vectors (channel fixed). f(i) gets the offset of a kVec-vector's first element.
template <int kVec, typename F>
__device__ __forceinline__ void for_each_channels_last(const BnShape& shape, int64_t cv, F&& f) {
  const int64_t C = shape.channels, rows = shape.reduce_size();
  for (int64_t r = blockIdx.y * static_cast<int64_t>(blockDim.y) + threadIdx.y; r < rows;
       r += static_cast<int64_t>(gridDim.y) * blockDim.y)
    f(r * C + cv * kVec);
}

template <int kVec, typename F>
__device__ __forceinline__ void for_each_planar(const BnShape& shape, int64_t c, F&& f) {
  const int64_t C = shape.channels, S = shape.spatial, vectors = S / kVec;
  for (int64_t n = blockIdx.y * static_cast<int64_t>(blockDim.y) + threadIdx.y; n < shape.batch;
       n += static_cast<int64_t>(gridDim.y) * blockDim.y) {
    const int64_t plane = (n * C + c) * S;
    for (int64_t v = blockIdx.z * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < vectors;
         v += static_cast<int64_t>(gridDim.z) * blockDim.x)
      f(plane + v * kVec);
  }
}

template <typename Act, bool kResidual, int kVec, typename scalar_t, typename acc_t>
__global__ void apply_channels_last(ApplyArgs<scalar_t, acc_t> a) {
  const int64_t cv = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (cv >= a.shape.channels / kVec) return;
  acc_t scale[kVec], shift[kVec];
  load_per_lane<kVec>(a.scale, cv * kVec, 1, scale);
  load_per_lane<kVec>(a.shift, cv * kVec, 1, shift);
  for_each_channels_last<kVec>(a.shape, cv, [&](int64_t i) { apply_vector<Act, kResidual>(a, i, scale, shift); });
}

template <typename Act, bool kResidual, int kVec, typename scalar_t, typename acc_t>
__global__ void apply_planar(ApplyArgs<scalar_t, acc_t> a) {
  const int64_t c = blockIdx.x;
  acc_t scale[kVec], shift[kVec];
  load_per_lane<kVec>(a.scale, c, 0, scale);
  load_per_lane<kVec>(a.shift, c, 0, shift);
  for_each_planar<kVec>(a.shape, c, [&](int64_t i) { apply_vector<Act, kResidual>(a, i, scale, shift); });
}

template <typename Act, bool kResidual, bool kFromOutput, int kVec, typename scalar_t, typename acc_t>
__global__ void elemt_channels_last(ElemtArgs<scalar_t, acc_t> a) {
  const int64_t cv = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (cv >= a.shape.channels / kVec) return;
  const auto coefs = ElemtCoefs<acc_t, kVec>::load(a, cv * kVec, 1);
  for_each_channels_last<kVec>(a.shape, cv,
                               [&](int64_t i) { elemt_vector<Act, kResidual, kFromOutput>(a, i, coefs); });
}

template <typename Act, bool kResidual, bool kFromOutput, int kVec, typename scalar_t, typename acc_t>
__global__ void elemt_planar(ElemtArgs<scalar_t, acc_t> a) {
  const int64_t c = blockIdx.x;
  const auto coefs = ElemtCoefs<acc_t, kVec>::load(a, c, 0);
  for_each_planar<kVec>(a.shape, c, [&](int64_t i) { elemt_vector<Act, kResidual, kFromOutput>(a, i, coefs); });
}

// Four waves of 256-thread blocks; the loops stride over the rest.
int64_t elementwise_target_blocks(int num_sms) { return 32 * static_cast<int64_t>(std::max(num_sms, 1)); }

}  // namespace

template <typename scalar_t, typename acc_t>
void launch_apply(const ApplyArgs<scalar_t, acc_t>& args, ActKind act, const LaunchContext& ctx) {
  const int vec = vector_width<scalar_t>(args.shape, {args.input, args.residual, args.output});
  const Geometry geo = launch_geometry(args.shape, vec, elementwise_target_blocks(ctx.num_sms));
  dispatch_act_residual(act, args.residual != nullptr, [&](auto activation, auto res) {
    using Act = decltype(activation);
    constexpr bool kRes = decltype(res)::value;
    dispatch_vector_width<scalar_t>(vec, [&](auto vec_width) {
      constexpr int kVec = decltype(vec_width)::value;
      if (args.shape.channels_last)
        apply_channels_last<Act, kRes, kVec><<<geo.grid, geo.block, 0, ctx.stream>>>(args);
      else
        apply_planar<Act, kRes, kVec><<<geo.grid, geo.block, 0, ctx.stream>>>(args);
    });
  });
}

template <typename scalar_t, typename acc_t>
void launch_backward_elemt(const ElemtArgs<scalar_t, acc_t>& args, ActKind act, bool from_output,
                           const LaunchContext& ctx) {
  const int vec = vector_width<scalar_t>(
      args.shape, {args.grad_out, args.saved, args.residual, args.grad_input, args.grad_residual});
  const Geometry geo = launch_geometry(args.shape, vec, elementwise_target_blocks(ctx.num_sms));
  dispatch_backward(act, args.residual != nullptr, from_output, [&](auto activation, auto res, auto from_out) {
    using Act = decltype(activation);
    constexpr bool kRes = decltype(res)::value, kFromOut = decltype(from_out)::value;
    dispatch_vector_width<scalar_t>(vec, [&](auto vec_width) {
      constexpr int kVec = decltype(vec_width)::value;
      if (args.shape.channels_last)
        elemt_channels_last<Act, kRes, kFromOut, kVec><<<geo.grid, geo.block, 0, ctx.stream>>>(args);
      else
        elemt_planar<Act, kRes, kFromOut, kVec><<<geo.grid, geo.block, 0, ctx.stream>>>(args);
    });
  });
}

#define FBN_INSTANTIATE_ELEMENTWISE(scalar_t, acc_t)                                                    \
  template void launch_apply<scalar_t, acc_t>(const ApplyArgs<scalar_t, acc_t>&, ActKind,               \
                                              const LaunchContext&);                                    \
  template void launch_backward_elemt<scalar_t, acc_t>(const ElemtArgs<scalar_t, acc_t>&, ActKind, bool, \
                                                       const LaunchContext&);
FBN_INSTANTIATE_ELEMENTWISE(float, float)
FBN_INSTANTIATE_ELEMENTWISE(double, double)
FBN_INSTANTIATE_ELEMENTWISE(__half, float)
FBN_INSTANTIATE_ELEMENTWISE(__nv_bfloat16, float)
#undef FBN_INSTANTIATE_ELEMENTWISE

}  // namespace cuda
}  // namespace pyfusedbn
