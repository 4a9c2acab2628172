// Elementwise passes on the GPU: the forward (normalise + affine + residual + activation) and
// the backward's grad_input / grad_residual pass. Each thread loads its channel coefficients
// once, then walks its items (launch_geometry.h: channels_last rows, kVec channels of a row per
// access; planar vectors of one channel's planes), loading kUnroll items before using them.
#include "batch_norm_kernels.cuh"
#include "device_utils.cuh"

namespace pyfusedbn {
namespace cuda {
namespace {

// Forward: out = act(x * scale[c] + shift[c] (+ residual)), kUnroll items' loads in flight.
template <typename Act, bool kResidual, bool kChannelsLast, int kVec, typename scalar_t, typename acc_t>
__global__ void apply_kernel(ApplyArgs<scalar_t, acc_t> a) {
  constexpr int kUnroll = unroll_for(kVec * sizeof(scalar_t), kApplyStreams + kResidual);
  constexpr int kLanes = kCoefLanes<kChannelsLast, kVec>;
  const BnShape shape = compiled_layout<kChannelsLast>(a.shape);
  const ThreadWalk w = thread_walk(shape, kVec, this_thread());
  if (!w.active) return;
  acc_t scale[kLanes], shift[kLanes];
  load_lanes<kLanes>(a.scale, lane_channel(shape, w, kVec, 0), scale);
  load_lanes<kLanes>(a.shift, lane_channel(shape, w, kVec, 0), shift);
  walk_items<kVec, kUnroll>(shape, w, [&](const int64_t (&offsets)[kUnroll], int count) {
    Vec<scalar_t, kVec> x[kUnroll], residual[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (u < count) {
        x[u] = load_vec<kVec>(a.input + offsets[u]);
        if constexpr (kResidual) residual[u] = load_vec<kVec>(a.residual + offsets[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (u < count) {
        acc_t out[kVec];
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
          acc_t z = to_acc<acc_t>(x[u].v[k]) * scale[at_lane<kLanes>(k)] + shift[at_lane<kLanes>(k)];
          if constexpr (kResidual) z += to_acc<acc_t>(residual[u].v[k]);
          out[k] = Act::value(z, a.activation_param);
        }
        store_acc<kVec>(a.output + offsets[u], out);
      }
    }
  });
}

// Backward: grad_input = g * coef_g[c] + xc * coef_xc[c] + coef_const[c], grad_residual = g.
template <typename Act, bool kResidual, bool kFromOutput, bool kChannelsLast, int kVec, typename scalar_t,
          typename acc_t>
__global__ void elemt_kernel(ElemtArgs<scalar_t, acc_t> a) {
  constexpr int kUnroll = unroll_for(kVec * sizeof(scalar_t), kElemtStreams + kResidual);
  constexpr int kLanes = kCoefLanes<kChannelsLast, kVec>;
  const BnShape shape = compiled_layout<kChannelsLast>(a.shape);
  const ThreadWalk w = thread_walk(shape, kVec, this_thread());
  if (!w.active) return;
  const int64_t c0 = lane_channel(shape, w, kVec, 0);
  const auto rebuild = RebuildCoefs<acc_t, kLanes>::load(a.mean, a.scale, a.bias, c0);
  acc_t coef_g[kLanes], coef_xc[kLanes], coef_const[kLanes];
  load_lanes<kLanes>(a.coef_g, c0, coef_g);
  load_lanes<kLanes>(a.coef_xc, c0, coef_xc);
  load_lanes<kLanes>(a.coef_const, c0, coef_const);
  walk_backward_terms<Act, kResidual, kFromOutput, kVec, kUnroll>(
      a, shape, w, rebuild, [&](int64_t offset, const acc_t (&g)[kVec], const acc_t (&xc)[kVec]) {
        acc_t grad_input[kVec];
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
          const int l = at_lane<kLanes>(k);
          grad_input[k] = g[k] * coef_g[l] + xc[k] * coef_xc[l] + coef_const[l];
        }
        store_acc<kVec>(a.grad_input + offset, grad_input);
        if constexpr (kResidual) store_acc<kVec>(a.grad_residual + offset, g);
      });
}

}  // namespace

template <typename scalar_t, typename acc_t>
void launch_apply(const ApplyArgs<scalar_t, acc_t>& args, ActKind act, const LaunchContext& ctx) {
  const int vec = vector_width<scalar_t>(args.shape, {args.input, args.residual, args.output});
  dispatch_act_residual(act, args.residual != nullptr, [&](auto activation, auto res) {
    dispatch_layout(args.shape, [&](auto layout) {
      dispatch_vector_width<scalar_t>(vec, [&](auto vec_width) {
        const auto kernel = apply_kernel<decltype(activation), decltype(res)::value, decltype(layout)::value,
                                         decltype(vec_width)::value, scalar_t, acc_t>;
        static const int blocks_per_sm = resident_blocks_per_sm(kernel);
        const Geometry geo = launch_geometry(args.shape, vec, elementwise_target_blocks(ctx.num_sms, blocks_per_sm));
        kernel<<<grid_dims(geo), block_dims(geo), 0, ctx.stream>>>(args);
      });
    });
  });
}

template <typename scalar_t, typename acc_t>
void launch_backward_elemt(const ElemtArgs<scalar_t, acc_t>& args, ActKind act, bool from_output,
                           const LaunchContext& ctx) {
  const int vec = vector_width<scalar_t>(
      args.shape, {args.grad_out, args.saved, args.residual, args.grad_input, args.grad_residual});
  dispatch_backward(act, args.residual != nullptr, from_output, [&](auto activation, auto res, auto from_out) {
    dispatch_layout(args.shape, [&](auto layout) {
      dispatch_vector_width<scalar_t>(vec, [&](auto vec_width) {
        const auto kernel = elemt_kernel<decltype(activation), decltype(res)::value, decltype(from_out)::value,
                                         decltype(layout)::value, decltype(vec_width)::value, scalar_t, acc_t>;
        static const int blocks_per_sm = resident_blocks_per_sm(kernel);
        const Geometry geo = launch_geometry(args.shape, vec, elementwise_target_blocks(ctx.num_sms, blocks_per_sm));
        kernel<<<grid_dims(geo), block_dims(geo), 0, ctx.stream>>>(args);
      });
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
