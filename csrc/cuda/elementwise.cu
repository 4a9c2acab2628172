// Elementwise passes on the GPU: the forward (normalise + affine + residual + activation) and
// the backward's grad_input / grad_residual pass. Planar (NCHW): one block row per (n, c)
// plane, so the channel's coefficients are loaded once per thread; channels_last: 32 channels x
// 16 rows per block, each warp reading 32 consecutive channels of a row (coalesced).
#include "device_utils.cuh"
#include "launch.cuh"

namespace pyfusedbn {
namespace cuda {
namespace {

template <typename Act, bool kResidual, typename scalar_t, typename acc_t>
__device__ __forceinline__ void apply_one(const ApplyArgs<scalar_t, acc_t>& a, int64_t i, acc_t scale,
                                          acc_t shift) {
  acc_t z = to_acc<acc_t>(a.input[i]) * scale + shift;
  if constexpr (kResidual) z += to_acc<acc_t>(a.residual[i]);
  a.output[i] = from_acc<scalar_t>(Act::value(z, a.activation_param));
}

template <typename Act, bool kResidual, bool kFromOutput, typename scalar_t, typename acc_t>
__device__ __forceinline__ void elemt_one(const ElemtArgs<scalar_t, acc_t>& a, int64_t i, int64_t c) {
  const acc_t p = a.activation_param;
  const auto r = rebuild_pre_activation<Act, kResidual, kFromOutput, acc_t>(
      to_acc<acc_t>(a.saved[i]), kResidual ? to_acc<acc_t>(a.residual[i]) : acc_t(0), a.mean[c],
      a.scale[c], a.bias[c], p);
  const acc_t g = to_acc<acc_t>(a.grad_out[i]) * Act::grad(r.z, p);
  a.grad_input[i] = from_acc<scalar_t>(g * a.coef_g[c] + r.xc * a.coef_xc[c] + a.coef_const[c]);
  if constexpr (kResidual) a.grad_residual[i] = from_acc<scalar_t>(g);
}

// Planar: blockIdx.x = plane (n * C + c), x/y of the grid over the plane's positions.
template <typename Act, bool kResidual, typename scalar_t, typename acc_t>
__global__ void apply_planar(ApplyArgs<scalar_t, acc_t> a) {
  const int64_t S = a.shape.spatial, plane = blockIdx.x, c = plane % a.shape.channels;
  const acc_t scale = a.scale[c], shift = a.shift[c];
  for (int64_t s = blockIdx.y * blockDim.x + threadIdx.x; s < S; s += gridDim.y * blockDim.x)
    apply_one<Act, kResidual>(a, plane * S + s, scale, shift);
}

template <typename Act, bool kResidual, typename scalar_t, typename acc_t>
__global__ void apply_channels_last(ApplyArgs<scalar_t, acc_t> a) {
  const int64_t C = a.shape.channels, rows = a.shape.reduce_size();
  const int64_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const acc_t scale = a.scale[c], shift = a.shift[c];
  for (int64_t r = blockIdx.y * blockDim.y + threadIdx.y; r < rows; r += gridDim.y * blockDim.y)
    apply_one<Act, kResidual>(a, r * C + c, scale, shift);
}

template <typename Act, bool kResidual, bool kFromOutput, typename scalar_t, typename acc_t>
__global__ void elemt_planar(ElemtArgs<scalar_t, acc_t> a) {
  const int64_t S = a.shape.spatial, plane = blockIdx.x, c = plane % a.shape.channels;
  for (int64_t s = blockIdx.y * blockDim.x + threadIdx.x; s < S; s += gridDim.y * blockDim.x)
    elemt_one<Act, kResidual, kFromOutput>(a, plane * S + s, c);
}

template <typename Act, bool kResidual, bool kFromOutput, typename scalar_t, typename acc_t>
__global__ void elemt_channels_last(ElemtArgs<scalar_t, acc_t> a) {
  const int64_t C = a.shape.channels, rows = a.shape.reduce_size();
  const int64_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  for (int64_t r = blockIdx.y * blockDim.y + threadIdx.y; r < rows; r += gridDim.y * blockDim.y)
    elemt_one<Act, kResidual, kFromOutput>(a, r * C + c, c);
}

// Elementwise grids: planar launches one block column per plane (x, up to 2^31 - 1) and enough
// blocks along y to cover the plane; channels_last tiles channels on x and strides rows on y.
struct ElementwiseGeometry {
  dim3 grid, block;
};

ElementwiseGeometry elementwise_geometry(const BnShape& shape) {
  if (shape.channels_last) {
    const int64_t row_blocks = std::min<int64_t>(ceil_div(shape.reduce_size(), kRowsPerBlock), 65535);
    return {dim3(static_cast<unsigned>(ceil_div(shape.channels, 32)), static_cast<unsigned>(row_blocks)),
            channels_last_block()};
  }
  int threads = 32;
  while (threads < shape.spatial && threads < 256) threads *= 2;
  const int64_t blocks_per_plane = std::min<int64_t>(ceil_div(shape.spatial, threads), 65535);
  return {dim3(static_cast<unsigned>(shape.batch * shape.channels), static_cast<unsigned>(blocks_per_plane)),
          dim3(threads)};
}

}  // namespace

template <typename scalar_t, typename acc_t>
void launch_apply(const ApplyArgs<scalar_t, acc_t>& args, ActKind act, const LaunchContext& ctx) {
  const ElementwiseGeometry geo = elementwise_geometry(args.shape);
  dispatch_kernel_variant(act, args.residual != nullptr, false, [&](auto activation, auto res, auto) {
    using Act = decltype(activation);
    constexpr bool kRes = decltype(res)::value;
    if (args.shape.channels_last) apply_channels_last<Act, kRes><<<geo.grid, geo.block, 0, ctx.stream>>>(args);
    else apply_planar<Act, kRes><<<geo.grid, geo.block, 0, ctx.stream>>>(args);
  });
}

template <typename scalar_t, typename acc_t>
void launch_backward_elemt(const ElemtArgs<scalar_t, acc_t>& args, ActKind act, bool from_output,
                           const LaunchContext& ctx) {
  const ElementwiseGeometry geo = elementwise_geometry(args.shape);
  dispatch_kernel_variant(act, args.residual != nullptr, from_output, [&](auto activation, auto res, auto from_out) {
    using Act = decltype(activation);
    constexpr bool kRes = decltype(res)::value, kFromOut = decltype(from_out)::value;
    if (args.shape.channels_last)
      elemt_channels_last<Act, kRes, kFromOut><<<geo.grid, geo.block, 0, ctx.stream>>>(args);
    else
      elemt_planar<Act, kRes, kFromOut><<<geo.grid, geo.block, 0, ctx.stream>>>(args);
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
