// Shared pieces of the CPU direct sparse convolution: geometry, arguments, the register-blocked
// micro-kernel (an AXPY of one CSR row's nonzeros over up to kTile contiguous positions) and the
// fused epilogue (residual add and activation applied while the result is stored).
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <utility>

#if defined(__AVX512F__)
#include <immintrin.h>
#define COMPRESSOR_SPARSE_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define COMPRESSOR_SPARSE_AVX2 1
#endif

namespace compressor::sparse_cpu {

#if defined(COMPRESSOR_SPARSE_AVX512)
constexpr int kLanes = 16;          // floats per AVX-512 register
constexpr int kMaxVectors = 12;     // accumulators in registers: 12 of 32 zmm, the rest for loads
#else
constexpr int kLanes = 8;           // floats per AVX2 register
constexpr int kMaxVectors = 8;      // accumulators held in registers (16 ymm in all)
#endif
constexpr int kTile = kLanes * kMaxVectors;
// n floats rounded up to whole vectors.
constexpr int64_t vector_multiple(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }
constexpr int kRows = 4;               // rows taken together by axpy_rows (uniform weights)
constexpr int kMaxClasses = 4;         // alignment classes a layer's rows may be split into
constexpr int64_t kRunTiles = 4;       // tiles per conv task: enough tasks for threads at batch 1
constexpr int64_t kL2Floats = 16 * 1024;  // input floats under one tile kept hot (64 KiB)

struct ConvGeom {
  int64_t N, Cin, H, W, Cout, groups, cin_g, cout_g;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t Hp, Wp, Ho, Wo;
  int64_t Hq, Wq;   // one phase plane (stride phase of the padded input)
  int64_t plane;    // Hq * Wq
  int64_t chan;     // sh * sw * plane: one input channel of the phased buffer
  int64_t span;     // (Ho - 1) * Wq + Wo virtual output positions
};

// The activation fused into the store: out = act(conv + bias + residual).
enum class Act : int { None = 0, ReLU = 1, ReLU6 = 2, SiLU = 3 };

struct ConvArgs {
  ConvGeom geom;
  const float* input;     // phased, padded: (N, Cin, sh, sw, Hq, Wq)
  const float* values;    // (nnz)
  const int32_t* offsets; // (nnz) into one group's channels of the phased buffer
  const int32_t* segs;    // (Cout, ncb * classes + 1): where each row's blocks (classes) start
  int64_t ncb;            // input-channel blocks (1 when rows are not sorted by channel)
  const float* bias;      // (Cout) or nullptr
  const float* residual;  // (N, Cout, Ho, Wo) added before the activation, or nullptr
  Act act;
  float* output;          // (N, Cout, Ho, Wo)
  // Every row has the same columns (an unpruned layer), this many: rows share loads. 0 if not.
  int64_t uniform_length = 0;
  // Alignment classes (see Prepared in sparse_conv_prep.h): with classes > 1 each (row, block)
  // segment is `classes` runs, run c holding the nonzeros whose offset is shifts[c] past a
  // multiple of kLanes, stored as that multiple, with value_index[k] naming each one's value.
  int64_t classes = 1;
  int32_t shifts[kMaxClasses] = {};
  const int32_t* value_index = nullptr;
  // The input may be read up to a vector past any tile (a copy with slack after it, not a
  // caller's tensor): tiles then run whole vectors, the lanes past the tile thrown away, as a
  // masked last vector costs more than a whole one (a 1x1 on 1x49 planes copied aligned: 3.44 ns
  // a nonzero masked, 3.18 whole; ResNet-50's 7x7 3x3 1.08-1.28x; Intel Xeon).
  bool whole_vectors = false;
};

// [min, max] of idx[0:n] folded into [lo, hi]. Written with plain locals so it vectorises: with
// std::min on references GCC kept lo/hi in memory and this check took 40% of a conv call.
inline std::pair<int32_t, int32_t> index_range(const int32_t* idx, int64_t n, int32_t lo,
                                                int32_t hi) {
  for (int64_t k = 0; k < n; ++k) {
    const int32_t v = idx[k];
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  }
  return {lo, hi};
}

// The geometry of a conv over an input of sizes (N, Cin, H, W).
ConvGeom make_geom(at::IntArrayRef input, int64_t cout, at::IntArrayRef k, at::IntArrayRef s,
                   at::IntArrayRef p, at::IntArrayRef d, int64_t groups);
// g with phase rows wq floats wide (wq >= the padded phase width) and what follows from that.
ConvGeom with_row_width(ConvGeom g, int64_t wq);
// A 1x1 conv (stride 1, unpadded) over planes of `positions` independent positions, laid out as
// one row per channel widened to whole vectors, so that every channel starts on a vector.
ConvGeom flat_geom(int64_t n, int64_t cin, int64_t positions, int64_t cout, int64_t groups);
void conv_forward(const ConvArgs& args);

// The micro-kernel: acc[0 : count) = init + sum_k vals[k] * in[offs[k] + 0 : count), count <=
// kTile, or acc + ... with `resume`. NV vector accumulators stay in registers over all nonzeros;
// the last vector is masked when count is not a whole number of vectors, on loads *and* stores,
// so nothing outside [0, count) of `in` or `acc` is touched. With few vectors one FMA chain per
// accumulator cannot hide the FMA latency, so nonzeros rotate over 2 or 4 accumulator sets.
#if defined(COMPRESSOR_SPARSE_AVX512)
using Vec = __m512;
using Mask = __mmask16;
inline Mask tail_mask(int tail) { return static_cast<Mask>((1u << tail) - 1u); }
inline Vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline Vec vload(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
inline void vstore(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline void vstore(float* p, Vec v, Mask m) { _mm512_mask_storeu_ps(p, m, v); }
inline Vec vset(float x) { return _mm512_set1_ps(x); }
inline Vec vzero() { return _mm512_setzero_ps(); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline Vec vadd(Vec a, Vec b) { return _mm512_add_ps(a, b); }
inline Vec vsub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
// max/min return the second operand when either is NaN: vmax(zero, v) keeps a NaN v, as torch does.
inline Vec vmax(Vec a, Vec b) { return _mm512_max_ps(a, b); }
inline Vec vmin(Vec a, Vec b) { return _mm512_min_ps(a, b); }
inline Vec vdiv(Vec a, Vec b) { return _mm512_div_ps(a, b); }
inline Vec vmul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
inline Vec vround(Vec a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT); }
inline Vec vscale2(Vec p, Vec n) { return _mm512_scalef_ps(p, n); }  // p * 2^n
inline Vec vselect_lt(Vec x, Vec limit, Vec if_lt, Vec otherwise) {
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, limit, _CMP_LT_OQ), otherwise, if_lt);
}
#define COMPRESSOR_SPARSE_SIMD 1
#elif defined(COMPRESSOR_SPARSE_AVX2)
using Vec = __m256;
using Mask = __m256i;
inline Mask tail_mask(int tail) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(tail), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline Vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline Vec vload(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
inline void vstore(float* p, Vec v) { _mm256_storeu_ps(p, v); }
inline void vstore(float* p, Vec v, Mask m) { _mm256_maskstore_ps(p, m, v); }
inline Vec vset(float x) { return _mm256_set1_ps(x); }
inline Vec vzero() { return _mm256_setzero_ps(); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline Vec vadd(Vec a, Vec b) { return _mm256_add_ps(a, b); }
inline Vec vsub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
inline Vec vmax(Vec a, Vec b) { return _mm256_max_ps(a, b); }
inline Vec vmin(Vec a, Vec b) { return _mm256_min_ps(a, b); }
inline Vec vdiv(Vec a, Vec b) { return _mm256_div_ps(a, b); }
inline Vec vmul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
inline Vec vround(Vec a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// p * 2^n for integral n in [-126, 127]: n goes straight into the exponent bits.
inline Vec vscale2(Vec p, Vec n) {
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n),
                                                          _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}
inline Vec vselect_lt(Vec x, Vec limit, Vec if_lt, Vec otherwise) {
  return _mm256_blendv_ps(otherwise, if_lt, _mm256_cmp_ps(x, limit, _CMP_LT_OQ));
}
#define COMPRESSOR_SPARSE_SIMD 1
#endif

#ifdef COMPRESSOR_SPARSE_SIMD
// The accumulator loops must be unrolled for sum[] to live in registers; GCC keeps it on the
// stack otherwise once NV is large (measured: 2-3x slower).
#if defined(__clang__)
#define COMPRESSOR_UNROLL _Pragma("unroll")
#else
#define COMPRESSOR_UNROLL _Pragma("GCC unroll 32")
#endif
template <int NV, bool kMasked, bool kIndexed>
inline void axpy_tile_simd(const float* vals, const int32_t* vidx, const int32_t* offs,
                           int64_t nnz, const float* in, float init, Mask mask, float* acc,
                           bool resume, int64_t stride) {
  constexpr int full = kMasked ? NV - 1 : NV;
  // Independent accumulator sets, so that sets * NV chains cover the FMA latency.
  constexpr int kSets = NV == 1 ? 4 : NV <= 4 ? 2 : 1;
  Vec sum[kSets][NV];
  COMPRESSOR_UNROLL
  for (int j = 0; j < full; ++j) sum[0][j] = resume ? vload(acc + j * kLanes) : vset(init);
  if constexpr (kMasked)
    sum[0][NV - 1] = resume ? vload(acc + (NV - 1) * kLanes, mask) : vset(init);
  int64_t k = 0;
  if constexpr (kSets > 1) {
    COMPRESSOR_UNROLL
    for (int t = 1; t < kSets; ++t)
      COMPRESSOR_UNROLL
      for (int j = 0; j < NV; ++j) sum[t][j] = vzero();
    for (; k + kSets <= nnz; k += kSets) {
      COMPRESSOR_UNROLL
      for (int t = 0; t < kSets; ++t) {
        const Vec v = vset(kIndexed ? vals[vidx[k + t]] : vals[k + t]);
        const float* src = in + offs[k + t] * stride;
        COMPRESSOR_UNROLL
        for (int j = 0; j < full; ++j) sum[t][j] = vfma(v, vload(src + j * kLanes), sum[t][j]);
        if constexpr (kMasked)
          sum[t][NV - 1] = vfma(v, vload(src + (NV - 1) * kLanes, mask), sum[t][NV - 1]);
      }
    }
    COMPRESSOR_UNROLL
    for (int t = 1; t < kSets; ++t)
      COMPRESSOR_UNROLL
      for (int j = 0; j < NV; ++j) sum[0][j] = vadd(sum[0][j], sum[t][j]);
  }
  for (; k < nnz; ++k) {
    const Vec v = vset(kIndexed ? vals[vidx[k]] : vals[k]);
    const float* src = in + offs[k] * stride;
    COMPRESSOR_UNROLL
    for (int j = 0; j < full; ++j) sum[0][j] = vfma(v, vload(src + j * kLanes), sum[0][j]);
    if constexpr (kMasked)
      sum[0][NV - 1] = vfma(v, vload(src + (NV - 1) * kLanes, mask), sum[0][NV - 1]);
  }
  COMPRESSOR_UNROLL
  for (int j = 0; j < full; ++j) vstore(acc + j * kLanes, sum[0][j]);
  if constexpr (kMasked) vstore(acc + (NV - 1) * kLanes, sum[0][NV - 1], mask);
}

template <int NV, bool kIndexed>
inline void axpy_tile_nv(const float* vals, const int32_t* vidx, const int32_t* offs, int64_t nnz,
                         const float* in, float init, int64_t count, float* acc, bool resume,
                         int64_t stride) {
  const int tail = static_cast<int>(count - (NV - 1) * kLanes);
  if (tail == kLanes)
    axpy_tile_simd<NV, false, kIndexed>(vals, vidx, offs, nnz, in, init, tail_mask(tail), acc,
                                        resume, stride);
  else
    axpy_tile_simd<NV, true, kIndexed>(vals, vidx, offs, nnz, in, init, tail_mask(tail), acc,
                                       resume, stride);
}

// Instantiates axpy_tile_nv<1..kMost> and picks the one covering `count`.
template <bool kIndexed, int kMost, int NV = 1>
inline void axpy_tile_dispatch(int nv, const float* vals, const int32_t* vidx, const int32_t* offs,
                               int64_t nnz, const float* in, float init, int64_t count,
                               float* acc, bool resume, int64_t stride) {
  if constexpr (NV < kMost) {
    if (nv > NV)
      return axpy_tile_dispatch<kIndexed, kMost, NV + 1>(nv, vals, vidx, offs, nnz, in, init,
                                                         count, acc, resume, stride);
  }
  axpy_tile_nv<NV, kIndexed>(vals, vidx, offs, nnz, in, init, count, acc, resume, stride);
}
#endif

#ifdef COMPRESSOR_SPARSE_SIMD
// kRows rows that share their columns (an unpruned layer such as a network's stem): each slice of
// the input is loaded once for all of them, so the FMAs, not the loads, bound the loop
// (measured: ResNet-50's 7x7 stem 4.1 -> 2.6 ms, 1 thread). kRows * kMultiVectors accumulators
// plus one slice stay in registers.
#if defined(COMPRESSOR_SPARSE_AVX512)
constexpr int kMultiVectors = 6;  // 24 accumulators + 6 loads of 32 zmm
#else
constexpr int kMultiVectors = 2;  // 8 accumulators + 2 loads + broadcasts of 16 ymm
#endif
constexpr int kMultiTile = kLanes * kMultiVectors;

template <int NV, bool kMasked>
inline void axpy_rows_simd(const float* vals, int64_t row_stride, const int32_t* offs, int64_t nnz,
                           const float* in, const float* init, Mask mask, float* acc,
                           int64_t acc_stride, bool resume) {
  Vec sum[kRows][NV];
  COMPRESSOR_UNROLL
  for (int r = 0; r < kRows; ++r)
    COMPRESSOR_UNROLL
    for (int j = 0; j < NV; ++j) {
      float* at = acc + r * acc_stride + j * kLanes;
      sum[r][j] = !resume ? vset(init[r]) : (kMasked && j == NV - 1) ? vload(at, mask) : vload(at);
    }
  for (int64_t k = 0; k < nnz; ++k) {
    const float* src = in + offs[k];
    Vec x[NV];
    COMPRESSOR_UNROLL
    for (int j = 0; j < NV; ++j)
      x[j] = (kMasked && j == NV - 1) ? vload(src + j * kLanes, mask) : vload(src + j * kLanes);
    COMPRESSOR_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const Vec v = vset(vals[r * row_stride + k]);
      COMPRESSOR_UNROLL
      for (int j = 0; j < NV; ++j) sum[r][j] = vfma(v, x[j], sum[r][j]);
    }
  }
  COMPRESSOR_UNROLL
  for (int r = 0; r < kRows; ++r)
    COMPRESSOR_UNROLL
    for (int j = 0; j < NV; ++j) {
      float* at = acc + r * acc_stride + j * kLanes;
      (kMasked && j == NV - 1) ? vstore(at, sum[r][j], mask) : vstore(at, sum[r][j]);
    }
}

template <int NV = 1>
inline void axpy_rows_dispatch(int nv, const float* vals, int64_t row_stride, const int32_t* offs,
                               int64_t nnz, const float* in, const float* init, int64_t count,
                               float* acc, int64_t acc_stride, bool resume) {
  if constexpr (NV < kMultiVectors) {
    if (nv > NV)
      return axpy_rows_dispatch<NV + 1>(nv, vals, row_stride, offs, nnz, in, init, count, acc,
                                        acc_stride, resume);
  }
  const int tail = static_cast<int>(count - (NV - 1) * kLanes);
  if (tail == kLanes)
    axpy_rows_simd<NV, false>(vals, row_stride, offs, nnz, in, init, tail_mask(tail), acc,
                              acc_stride, resume);
  else
    axpy_rows_simd<NV, true>(vals, row_stride, offs, nnz, in, init, tail_mask(tail), acc,
                             acc_stride, resume);
}

// For r < kRows: acc[r * acc_stride + 0 : count) = (resume ? itself : init[r])
//   + sum_k vals[r * row_stride + k] * in[offs[k] + 0 : count), 1 <= count <= kMultiTile.
inline void axpy_rows(const float* vals, int64_t row_stride, const int32_t* offs, int64_t nnz,
                      const float* in, const float* init, int64_t count, float* acc,
                      int64_t acc_stride, bool resume) {
  const int nv = static_cast<int>((count + kLanes - 1) / kLanes);
  axpy_rows_dispatch(nv, vals, row_stride, offs, nnz, in, init, count, acc, acc_stride, resume);
}
#endif

// acc[0 : count) = (resume ? acc : init) + sum_k vals[k] * in[offs[k] * stride + 0 : count),
// 1 <= count <= kTile; only acc[0 : count) is written. (`stride` lets SpMM pass column indices
// as they are instead of a scaled copy: one pass over the indices less.)
inline void axpy_tile(const float* vals, const int32_t* offs, int64_t nnz, const float* in,
                      float init, int64_t count, float* acc, bool resume = false,
                      int64_t stride = 1) {
#ifdef COMPRESSOR_SPARSE_SIMD
  const int nv = static_cast<int>((count + kLanes - 1) / kLanes);
  axpy_tile_dispatch<false, kMaxVectors>(nv, vals, nullptr, offs, nnz, in, init, count, acc,
                                         resume, stride);
#else
  if (!resume)
    for (int64_t i = 0; i < count; ++i) acc[i] = init;
  for (int64_t k = 0; k < nnz; ++k) {
    const float v = vals[k];
    const float* src = in + offs[k] * stride;
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) acc[i] += v * src[i];
  }
#endif
}

// acc[0 : count) += sum_k vals[vidx[k]] * in[offs[k] + 0 : count), count <= kTile + kLanes - 1:
// one alignment class's pass (channel_tiles), whose window starts up to kLanes - 1 positions
// before the tile so that its loads start on whole vectors.
inline void axpy_tile_indexed(const float* vals, const int32_t* vidx, const int32_t* offs,
                              int64_t nnz, const float* in, int64_t count, float* acc) {
#ifdef COMPRESSOR_SPARSE_SIMD
  const int nv = static_cast<int>((count + kLanes - 1) / kLanes);
  axpy_tile_dispatch<true, kMaxVectors + 1>(nv, vals, vidx, offs, nnz, in, 0.f, count, acc, true,
                                            1);
#else
  for (int64_t k = 0; k < nnz; ++k) {
    const float v = vals[vidx[k]];
    const float* src = in + offs[k];
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) acc[i] += v * src[i];
  }
#endif
}

// ---- fused epilogue ----------------------------------------------------------------------------

inline float act_scalar(float v, Act act) {
  switch (act) {
    case Act::ReLU: return v < 0.f ? 0.f : v;  // written so that a NaN stays NaN, as in torch
    case Act::ReLU6: return v < 0.f ? 0.f : (v > 6.f ? 6.f : v);
    case Act::SiLU: return v / (1.f + std::exp(-v));
    default: return v;
  }
}

#ifdef COMPRESSOR_SPARSE_SIMD
// exp(x) to ~2 ulp: x = n ln2 + r with |r| <= ln2/2, exp(r) by its degree-6 Taylor polynomial.
// The clamp keeps 2^n a normal float; beyond it exp is 0 or huge either way for SiLU.
inline Vec vexp(Vec x) {
  x = vmax(vset(-87.3f), vmin(vset(88.3f), x));
  const Vec n = vround(vmul(x, vset(1.44269504f)));
  const Vec r = vfma(n, vset(-1.42860677e-6f), vfma(n, vset(-0.693145752f), x));
  Vec p = vset(1.f / 720);
  for (const float c : {1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) p = vfma(p, r, vset(c));
  return vscale2(p, n);
}

template <Act A>
inline Vec act_vec(Vec v) {
  if constexpr (A == Act::ReLU) return vmax(vzero(), v);
  if constexpr (A == Act::ReLU6) return vmin(vset(6.f), vmax(vzero(), v));
  // Below -87 silu is 0 to float precision; v * 0 there also makes silu(-inf) NaN, as in torch.
  if constexpr (A == Act::SiLU)
    return vselect_lt(v, vset(-87.f), vmul(v, vzero()),
                      vdiv(v, vadd(vset(1.f), vexp(vsub(vzero(), v)))));
  return v;
}

template <Act A, bool kRes>
inline void epilogue_simd(const float* acc, const float* res, float* out, int64_t len) {
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
    Vec v = vload(acc + i);
    if constexpr (kRes) v = vadd(v, vload(res + i));
    vstore(out + i, act_vec<A>(v));
  }
  if (i < len) {
    const Mask m = tail_mask(static_cast<int>(len - i));
    Vec v = vload(acc + i, m);
    if constexpr (kRes) v = vadd(v, vload(res + i, m));
    vstore(out + i, act_vec<A>(v), m);
  }
}

// out = act(acc), and whether acc held no inf or NaN (x * 0 is 0 for finite x), on values already
// in registers: a separate check of each tile cost the fused bottleneck 9% of its time.
template <Act A>
inline bool epilogue_checked_simd(const float* acc, float* out, int64_t len) {
  Vec nan_if_any = vzero();
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
    const Vec v = vload(acc + i);
    nan_if_any = vadd(nan_if_any, vmul(v, vzero()));
    vstore(out + i, act_vec<A>(v));
  }
  if (i < len) {
    const Mask m = tail_mask(static_cast<int>(len - i));
    const Vec v = vload(acc + i, m);
    nan_if_any = vadd(nan_if_any, vmul(v, vzero()));
    vstore(out + i, act_vec<A>(v), m);
  }
  alignas(64) float lanes[kLanes];
  vstore(lanes, nan_if_any);
  float sum = 0.f;
  for (const float v : lanes) sum += v;
  return sum == sum;
}

template <Act A>
inline void epilogue_act(const float* acc, const float* res, float* out, int64_t len) {
  res ? epilogue_simd<A, true>(acc, res, out, len) : epilogue_simd<A, false>(acc, res, out, len);
}
#endif

// out[0 : len) = act(acc[0 : len) + res[0 : len)), res optional. acc and out may be the same.
inline void epilogue(const float* acc, const float* res, float* out, int64_t len, Act act) {
#ifdef COMPRESSOR_SPARSE_SIMD
  switch (act) {
    case Act::ReLU: return epilogue_act<Act::ReLU>(acc, res, out, len);
    case Act::ReLU6: return epilogue_act<Act::ReLU6>(acc, res, out, len);
    case Act::SiLU: return epilogue_act<Act::SiLU>(acc, res, out, len);
    default: return epilogue_act<Act::None>(acc, res, out, len);
  }
#else
  for (int64_t i = 0; i < len; ++i) out[i] = act_scalar(acc[i] + (res ? res[i] : 0.f), act);
#endif
}

// out[0 : len) = act(acc[0 : len)); returns whether acc[0 : len) was finite.
inline bool epilogue_checked(const float* acc, float* out, int64_t len, Act act) {
#ifdef COMPRESSOR_SPARSE_SIMD
  switch (act) {
    case Act::ReLU: return epilogue_checked_simd<Act::ReLU>(acc, out, len);
    case Act::ReLU6: return epilogue_checked_simd<Act::ReLU6>(acc, out, len);
    case Act::SiLU: return epilogue_checked_simd<Act::SiLU>(acc, out, len);
    default: return epilogue_checked_simd<Act::None>(acc, out, len);
  }
#else
  float nan_if_any = 0.f;
  for (int64_t i = 0; i < len; ++i) {
    nan_if_any += acc[i] * 0.f;
    out[i] = act_scalar(acc[i], act);
  }
  return nan_if_any == nan_if_any;
#endif
}

}  // namespace compressor::sparse_cpu
