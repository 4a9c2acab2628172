// The CPU elementwise passes: forward apply (normalise, affine, residual, activation) and the
// backward elementwise pass. Chunks (chunks.h) of acc_t values, one activation inlined per
// instantiation, inner loops vectorised with `omp simd`.
#pragma once

#include "../common/kernel_args.h"
#include "chunks.h"

namespace pyfusedbn {
namespace cpu {

// A per-channel coefficient at column j of a row: one value for the whole row (planar, p points
// at channel c's value; read once, before the loop, so the loop holds it in a register) or one
// per column (channels_last, p points at the row's first channel).
template <bool kPerColumn, typename acc_t>
struct Coef {
  const acc_t* p;
  acc_t value;

  explicit Coef(const acc_t* ptr) : p(ptr), value(*ptr) {}
  acc_t operator[](int64_t j) const {
    if constexpr (kPerColumn) return p[j];
    else return value;
  }
};

// g = dy * act'(z) and xc = x - mean of one element, returned as Rebuilt{xc, z = g}.
template <typename Act, bool kResidual, bool kFromOutput, typename acc_t>
inline Rebuilt<acc_t> grad_and_centred(acc_t dy, acc_t saved, acc_t residual, acc_t mean, acc_t scale,
                                       acc_t bias, acc_t param) {
  const auto r = rebuild_pre_activation<Act, kResidual, kFromOutput, acc_t>(saved, residual, mean, scale,
                                                                            bias, param);
  return {r.xc, dy * Act::grad(r.z, param)};
}

// One plane (or part of one) of channel c. In: acc_t (converted in bulk or in registers), or
// bfloat16 read in place (read_view).
template <typename Act, bool kResidual, typename In, typename acc_t>
inline void apply_row(const In* x, const In* res, acc_t scale, acc_t shift, acc_t* out, int64_t len, acc_t param) {
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) {
    acc_t z = load_acc<acc_t>(x[j]) * scale + shift;
    if constexpr (kResidual) z += load_acc<acc_t>(res[j]);
    out[j] = Act::value(z, param);
  }
}

// kRows channels_last rows of a tile from column `c` on, each column's scale and shift loaded once.
template <int64_t kRows, typename Act, bool kResidual, typename In, typename acc_t>
inline void apply_tile_rows(Rows<const In> x, Rows<const In> res, const acc_t* scale_at, const acc_t* shift_at,
                            Rows<acc_t> out, int64_t len, acc_t param) {
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) {
    const acc_t scale = scale_at[j], shift = shift_at[j];
    for (int64_t r = 0; r < kRows; ++r) {
      acc_t z = load_acc<acc_t>(x.p[r * x.stride + j]) * scale + shift;
      if constexpr (kResidual) z += load_acc<acc_t>(res.p[r * res.stride + j]);
      out.p[r * out.stride + j] = Act::value(z, param);
    }
  }
}

// Moves streams of a tile on by `rows` rows. Callers pass only the streams they have: a null
// check here (for an absent residual) was kept inside the compute loops by GCC 12, which then
// took bfloat16's in-place loads for gathers and left the AVX2 backward elementwise loop scalar
// and branchy (bfloat16 8x64x112x112 channels_last 26.5 ms where float16 took 1.7,
// `python tools/ab_cpu_passes.py --shapes 64x12544`, 2 threads, an AVX2-only Zen 3).
template <typename... Streams>
inline void advance_rows(int64_t rows, Streams&... streams) {
  ((streams.p += rows * streams.stride), ...);
}

// apply_tile_rows on float16 streams, converted in registers (kConvertsInRegisters).
template <int64_t kRows, typename Act, bool kResidual, typename scalar_t, typename acc_t>
inline void apply_tile_blocks(Rows<const scalar_t> x, Rows<const scalar_t> res, const acc_t* scale_at,
                              const acc_t* shift_at, Rows<scalar_t> out, int64_t len, acc_t param) {
  for_each_register_block<kRows, kResidual ? 2 : 1, 1, false, acc_t>(std::array{x, res}, std::array{out}, len,
                                              [&](const auto& in, const auto& o, int64_t j, auto n) {
    apply_tile_rows<kRows, Act, kResidual>(in[0], in[1], scale_at + j, shift_at + j, o[0], n, param);
  });
}

template <typename Act, bool kResidual, typename scalar_t, typename acc_t>
void apply_channels_last(const ApplyArgs<scalar_t, acc_t>& a) {
  const int64_t C = a.shape.channels;
  for_each_tile<scalar_t, acc_t>(a.shape, [&](const Tile& t) {
    if constexpr (kConvertsInRegisters<scalar_t, acc_t>) {
      const int64_t first = t.row * C + t.col;
      Rows<const scalar_t> x{a.input + first, C}, res{kResidual ? a.residual + first : nullptr, C};
      Rows<scalar_t> out{a.output + first, C};
      const acc_t *scale = a.scale + t.col, *shift = a.shift + t.col;
      for_each_sweep(t, [&](auto rows) {
        apply_tile_blocks<rows.value, Act, kResidual>(x, res, scale, shift, out, t.cols, a.activation_param);
        advance_rows(rows.value, x, out);
        if constexpr (kResidual) advance_rows(rows.value, res);
      });
      return;
    }
    acc_t x_buf[kChunk], res_buf[kChunk], out_buf[kChunk];
    auto x = read_tile(a.input, C, t, x_buf);
    decltype(x) res{nullptr, x.stride};
    if constexpr (kResidual) res = read_tile(a.residual, C, t, res_buf);
    Rows<acc_t> out = tile_target(a.output, C, t, out_buf);
    const acc_t *scale = a.scale + t.col, *shift = a.shift + t.col;
    for_each_sweep(t, [&](auto rows) {
      apply_tile_rows<rows.value, Act, kResidual>(x, res, scale, shift, out, t.cols, a.activation_param);
      advance_rows(rows.value, x, out);
      if constexpr (kResidual) advance_rows(rows.value, res);
    });
    flush_tile(out_buf, a.output, C, t);
  });
}

// Planar rows (or pieces) at least this long are converted in registers (kConvertsInRegisters);
// shorter ones, several planes to a chunk, are converted in bulk: per row the register blocks
// cost more than they save at 7x7 and 14x14 planes (float16 8x2048x49 apply 0.10 -> 0.22 ms,
// backward elementwise 0.21 -> 0.32; 8x1024x196 0.19 -> 0.20, 0.27 -> 0.32; at 28x28 they gain:
// 8x512x784 apply 0.35 -> 0.16, backward elementwise 0.53 -> 0.31; 2 threads, AVX2 Zen 3,
// `python tools/ab_cpu_passes.py`).
constexpr int64_t kPlanarRegisterCols = 256;

template <typename Act, bool kResidual, typename scalar_t, typename acc_t>
void apply_kernel(const ApplyArgs<scalar_t, acc_t>& a) {
  if (a.shape.channels_last) return apply_channels_last<Act, kResidual>(a);
  const int64_t C = a.shape.channels;
  for_each_chunk(a.shape, [&](const Chunk& k) {
    if (kConvertsInRegisters<scalar_t, acc_t> && k.cols >= kPlanarRegisterCols) {
      for (int64_t r = 0; r < k.rows; ++r) {
        const int64_t o = k.offset + r * k.cols, c = (k.first + r) % C;
        const Rows<const scalar_t> x{a.input + o, 0}, res{kResidual ? a.residual + o : nullptr, 0};
        const acc_t scale = a.scale[c], shift = a.shift[c], param = a.activation_param;
        for_each_register_block<1, kResidual ? 2 : 1, 1, true, acc_t>(
            std::array{x, res}, std::array{Rows<scalar_t>{a.output + o, 0}}, k.cols,
            [&](const auto& in, const auto& out, int64_t, auto n) {
          apply_row<Act, kResidual>(in[0].p, in[1].p, scale, shift, out[0].p, n, param);
        });
      }
      return;
    }
    acc_t x_buf[kChunk], res_buf[kChunk], out_buf[kChunk];
    const auto* x = read_view(a.input + k.offset, x_buf, k.numel());
    const auto* res = kResidual ? read_view(a.residual + k.offset, res_buf, k.numel()) : nullptr;
    acc_t* out = acc_target(a.output + k.offset, out_buf);
    for (int64_t r = 0; r < k.rows; ++r) {
      const int64_t o = r * k.cols;
      const auto* r_res = kResidual ? res + o : nullptr;
      const int64_t c = (k.first + r) % C;
      apply_row<Act, kResidual>(x + o, r_res, a.scale[c], a.shift[c], out + o, k.cols, a.activation_param);
    }
    flush(out, a.output + k.offset, k.numel());
  }, chunk_elements<scalar_t, acc_t>(a.shape));
}

// The backward elementwise pass's per-channel inputs at a row's channel (see Coef).
template <bool kPerColumn, typename acc_t>
struct ElemtCoefficients {
  Coef<kPerColumn, acc_t> mean, scale, bias, coef_g, coef_xc, coef_const;

  template <typename Args>
  ElemtCoefficients(const Args& a, int64_t c)
      : mean(a.mean + c), scale(a.scale + c), bias(a.bias + c), coef_g(a.coef_g + c), coef_xc(a.coef_xc + c),
        coef_const(a.coef_const + c) {}
};

// One plane (or part of one) of a channel with coefficients k, held in registers by the loop.
// In: acc_t (converted in bulk or in registers), or bfloat16 read in place (read_view).
template <typename Act, bool kResidual, bool kFromOutput, typename acc_t, typename In>
inline void elemt_row(const ElemtCoefficients<false, acc_t>& k, acc_t param, const In* dy, const In* saved,
                      const In* res, acc_t* dx, acc_t* dres, int64_t len) {
  const acc_t mean = k.mean[0], scale = k.scale[0], bias = k.bias[0], coef_g = k.coef_g[0], coef_xc = k.coef_xc[0],
              coef_const = k.coef_const[0];
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) {
    const auto t = grad_and_centred<Act, kResidual, kFromOutput>(
        load_acc<acc_t>(dy[j]), load_acc<acc_t>(saved[j]), kResidual ? load_acc<acc_t>(res[j]) : acc_t(0), mean,
        scale, bias, param);  // {xc, g}
    dx[j] = t.z * coef_g + t.xc * coef_xc + coef_const;
    if constexpr (kResidual) dres[j] = t.z;
  }
}

// kRows channels_last rows of a tile from column `c` of k on, each column's coefficients loaded
// once. In: acc_t (converted in bulk or in registers), or bfloat16 read in place (read_tile).
template <int64_t kRows, typename Act, bool kResidual, bool kFromOutput, typename acc_t, typename In>
inline void elemt_tile_rows(const ElemtCoefficients<true, acc_t>& k, int64_t c, acc_t param, Rows<const In> dy,
                            Rows<const In> saved, Rows<const In> res, Rows<acc_t> dx, Rows<acc_t> dres, int64_t len) {
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) {
    const acc_t mean = k.mean[c + j], scale = k.scale[c + j], bias = k.bias[c + j], coef_g = k.coef_g[c + j],
                coef_xc = k.coef_xc[c + j], coef_const = k.coef_const[c + j];
    for (int64_t r = 0; r < kRows; ++r) {
      const int64_t i = r * dy.stride + j;
      const auto t = grad_and_centred<Act, kResidual, kFromOutput>(
          load_acc<acc_t>(dy.p[i]), load_acc<acc_t>(saved.p[i]),
          kResidual ? load_acc<acc_t>(res.p[i]) : acc_t(0), mean, scale, bias, param);  // {xc, g}
      dx.p[r * dx.stride + j] = t.z * coef_g + t.xc * coef_xc + coef_const;
      if constexpr (kResidual) dres.p[r * dres.stride + j] = t.z;
    }
  }
}

// elemt_tile_rows on float16 streams, converted in registers (kConvertsInRegisters).
template <int64_t kRows, typename Act, bool kResidual, bool kFromOutput, typename scalar_t, typename acc_t>
inline void elemt_tile_blocks(const ElemtArgs<scalar_t, acc_t>& a, int64_t c, Rows<const scalar_t> dy,
                              Rows<const scalar_t> saved, Rows<const scalar_t> res, Rows<scalar_t> dx,
                              Rows<scalar_t> dres, int64_t len) {
  const ElemtCoefficients<true, acc_t> k(a, c);
  const acc_t param = a.activation_param;
  for_each_register_block<kRows, kResidual ? 3 : 2, kResidual ? 2 : 1, false, acc_t>(
      std::array{dy, saved, res}, std::array{dx, dres}, len, [&](const auto& in, const auto& out, int64_t j, auto n) {
    elemt_tile_rows<kRows, Act, kResidual, kFromOutput>(k, j, param, in[0], in[1], in[2], out[0], out[1], n);
  });
}

template <typename Act, bool kResidual, bool kFromOutput, typename scalar_t, typename acc_t>
void elemt_channels_last(const ElemtArgs<scalar_t, acc_t>& a) {
  const int64_t C = a.shape.channels;
  for_each_tile<scalar_t, acc_t>(a.shape, [&](const Tile& t) {
    if constexpr (kConvertsInRegisters<scalar_t, acc_t>) {
      const int64_t first = t.row * C + t.col;
      Rows<const scalar_t> dy{a.grad_out + first, C}, saved{a.saved + first, C},
          res{kResidual ? a.residual + first : nullptr, C};
      Rows<scalar_t> dx{a.grad_input + first, C}, dres{kResidual ? a.grad_residual + first : nullptr, C};
      for_each_sweep(t, [&](auto rows) {
        elemt_tile_blocks<rows.value, Act, kResidual, kFromOutput>(a, t.col, dy, saved, res, dx, dres, t.cols);
        advance_rows(rows.value, dy, saved, dx);
        if constexpr (kResidual) advance_rows(rows.value, res, dres);
      });
      return;
    }
    acc_t dy_buf[kChunk], saved_buf[kChunk], res_buf[kChunk], dx_buf[kChunk], dres_buf[kChunk];
    auto dy = read_tile(a.grad_out, C, t, dy_buf);
    auto saved = read_tile(a.saved, C, t, saved_buf);
    decltype(dy) res{nullptr, dy.stride};
    if constexpr (kResidual) res = read_tile(a.residual, C, t, res_buf);
    Rows<acc_t> dx = tile_target(a.grad_input, C, t, dx_buf);
    Rows<acc_t> dres{nullptr, dx.stride};
    if constexpr (kResidual) dres = tile_target(a.grad_residual, C, t, dres_buf);
    const ElemtCoefficients<true, acc_t> k(a, t.col);
    const acc_t param = a.activation_param;
    for_each_sweep(t, [&](auto rows) {
      elemt_tile_rows<rows.value, Act, kResidual, kFromOutput>(k, 0, param, dy, saved, res, dx, dres, t.cols);
      advance_rows(rows.value, dy, saved, dx);
      if constexpr (kResidual) advance_rows(rows.value, res, dres);
    });
    flush_tile(dx_buf, a.grad_input, C, t);
    if constexpr (kResidual) flush_tile(dres_buf, a.grad_residual, C, t);
  });
}

template <typename Act, bool kResidual, bool kFromOutput, typename scalar_t, typename acc_t>
void elemt_kernel(const ElemtArgs<scalar_t, acc_t>& a) {
  if (a.shape.channels_last) return elemt_channels_last<Act, kResidual, kFromOutput>(a);
  const int64_t C = a.shape.channels;
  for_each_chunk(a.shape, [&](const Chunk& k) {
    if (kConvertsInRegisters<scalar_t, acc_t> && k.cols >= kPlanarRegisterCols) {
      for (int64_t r = 0; r < k.rows; ++r) {
        const int64_t o = k.offset + r * k.cols;
        const ElemtCoefficients<false, acc_t> coefficients(a, (k.first + r) % C);
        const acc_t param = a.activation_param;
        const Rows<const scalar_t> dy{a.grad_out + o, 0}, saved{a.saved + o, 0},
            res{kResidual ? a.residual + o : nullptr, 0};
        const Rows<scalar_t> dx{a.grad_input + o, 0}, dres{kResidual ? a.grad_residual + o : nullptr, 0};
        for_each_register_block<1, kResidual ? 3 : 2, kResidual ? 2 : 1, true, acc_t>(
            std::array{dy, saved, res}, std::array{dx, dres}, k.cols,
            [&](const auto& in, const auto& out, int64_t, auto n) {
          elemt_row<Act, kResidual, kFromOutput>(coefficients, param, in[0].p, in[1].p, in[2].p, out[0].p, out[1].p,
                                                 n);
        });
      }
      return;
    }
    acc_t dy_buf[kChunk], saved_buf[kChunk], res_buf[kChunk], dx_buf[kChunk], dres_buf[kChunk];
    const int64_t n = k.numel();
    const auto* dy = read_view(a.grad_out + k.offset, dy_buf, n);
    const auto* saved = read_view(a.saved + k.offset, saved_buf, n);
    const auto* res = kResidual ? read_view(a.residual + k.offset, res_buf, n) : nullptr;
    acc_t* dx = acc_target(a.grad_input + k.offset, dx_buf);
    acc_t* dres = kResidual ? acc_target(a.grad_residual + k.offset, dres_buf) : nullptr;
    for (int64_t r = 0; r < k.rows; ++r) {
      const int64_t o = r * k.cols;
      const auto* r_res = kResidual ? res + o : nullptr;
      acc_t* r_dres = kResidual ? dres + o : nullptr;
      elemt_row<Act, kResidual, kFromOutput>(ElemtCoefficients<false, acc_t>(a, (k.first + r) % C),
                                             a.activation_param, dy + o, saved + o, r_res, dx + o, r_dres, k.cols);
    }
    flush(dx, a.grad_input + k.offset, n);
    if constexpr (kResidual) flush(dres, a.grad_residual + k.offset, n);
  }, chunk_elements<scalar_t, acc_t>(a.shape));
}

}  // namespace cpu
}  // namespace pyfusedbn
