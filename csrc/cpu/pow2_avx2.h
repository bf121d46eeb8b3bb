// AVX2 path of pow2_linear (format: compressor/quantization/packing.py; AVX-512: pow2_avx512.h).
//
// Decoding in registers: a power of two is a bf16 number (sign, exponent, zero mantissa), so its
// 16 high bits are the whole float. Per layer there are only 16 codes, so two 16-byte tables give
// the high and low byte of those 16 bits and one pshufb decodes 32 weights per byte. Unpacking the
// byte pairs into the top half of 32-bit lanes yields the float weights; no float copy of W exists.
// For 5 bits, a zero weight sets bit 7 of its table index, which makes pshufb return 0.
// The unpack order permutes columns inside each 64-column block; the input is permuted once to
// match (permute_input with avx2_column), so the inner loop is loads, byte ops and FMAs only.
#pragma once
#if defined(__AVX2__) && defined(__FMA__)
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "pow2_common.h"

namespace compressor::pow2_cpu {
namespace {  // one includer (pow2_linear.cpp): keep the kernels internal so they inline

constexpr int64_t kBlock = 64;  // columns per decode step: 32 code bytes

// Column (inside a 64-column block) of position i = 8 v + d: lane d of decoded vector v.
inline int64_t avx2_column(int64_t i) {
  const int v = static_cast<int>(i / 8), d = static_cast<int>(i % 8);
  const int parity = v >> 2, unpack_half = (v >> 1) & 1, word_half = v & 1;
  const int byte = (d / 4) * 16 + unpack_half * 8 + 2 * (d % 4) + word_half;
  return 2 * byte + parity;
}

// Loads the 32 code bytes (and 64 bitmap bits) of one block; the last block of a row may be
// partial (K_pad/2 is a multiple of 4 bytes), and what lies past the row reads as zero weights.
inline __m256i load_codes(const BlockSource& s, int64_t byte0) {
  const int64_t left = s.code_bytes - byte0;
  if (left >= 32) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s.codes + byte0));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(left / 4)), lane);
  return _mm256_maskload_epi32(reinterpret_cast<const int*>(s.codes + byte0), mask);
}

inline uint64_t load_bitmap(const BlockSource& s, int64_t byte0) {
  const int64_t first = byte0 / 4, left = s.code_bytes / 4 - first;  // bitmap bytes of this block
  uint64_t bm = 0;
  std::memcpy(&bm, s.bitmap + first, static_cast<size_t>(left >= 8 ? 8 : left));
  return bm;
}

struct Decoder {
  __m256i hi, lo, low_nibble, top_half, rep_ctrl, sel_even, sel_odd;
  bool has_bitmap;

  explicit Decoder(const Pow2Table& t, bool bitmap) : has_bitmap(bitmap) {
    hi = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(t.hi)));
    lo = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(t.lo)));
    low_nibble = _mm256_set1_epi8(0x0F);
    top_half = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
    // Byte b of a block holds columns 2b and 2b+1, whose bits sit in bitmap byte b/4.
    rep_ctrl = _mm256_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5,
                                5, 6, 6, 6, 6, 7, 7, 7, 7);
    sel_even = _mm256_set1_epi32(0x40100401);
    sel_odd = _mm256_set1_epi32(static_cast<int>(0x80200802u));
  }

  // Four float vectors of one nibble half; the order defines block_column.
  inline void decode_half(__m256i idx, __m256 out[4]) const {
    const __m256i b_hi = _mm256_shuffle_epi8(hi, idx), b_lo = _mm256_shuffle_epi8(lo, idx);
    const __m256i wa = _mm256_unpacklo_epi8(b_lo, b_hi), wb = _mm256_unpackhi_epi8(b_lo, b_hi);
    out[0] = _mm256_castsi256_ps(_mm256_slli_epi32(wa, 16));
    out[1] = _mm256_castsi256_ps(_mm256_and_si256(wa, top_half));
    out[2] = _mm256_castsi256_ps(_mm256_slli_epi32(wb, 16));
    out[3] = _mm256_castsi256_ps(_mm256_and_si256(wb, top_half));
  }

  // Table indices of the even (low nibble) and odd (high nibble) columns of a block.
  template <bool kBitmap>
  inline void indices(const BlockSource& s, int64_t byte0, __m256i& even, __m256i& odd) const {
    const __m256i c = load_codes(s, byte0);
    even = _mm256_and_si256(c, low_nibble);
    odd = _mm256_and_si256(_mm256_srli_epi16(c, 4), low_nibble);
    if constexpr (kBitmap) {
      const __m256i rep =
          _mm256_shuffle_epi8(_mm256_set1_epi64x(static_cast<int64_t>(load_bitmap(s, byte0))),
                              rep_ctrl);
      const __m256i zero = _mm256_setzero_si256();
      even = _mm256_or_si256(even, _mm256_cmpeq_epi8(_mm256_and_si256(rep, sel_even), zero));
      odd = _mm256_or_si256(odd, _mm256_cmpeq_epi8(_mm256_and_si256(rep, sel_odd), zero));
    }
  }
};

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One output row against MT input rows (MT <= 4): decode each block once, use it MT times.
template <int MT, bool kBitmap>
void row_dot(const Decoder& dec, const BlockSource& s, const float* xp, int64_t k64,
             int64_t blk0, int64_t blk1, float* out, int64_t out_stride) {
  __m256 acc[MT][2];
  for (int m = 0; m < MT; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    __m256i even, odd;
    dec.template indices<kBitmap>(s, blk * 32, even, odd);
    __m256 f[4];
    const float* xb = xp + blk * kBlock;
    dec.decode_half(even, f);
    for (int m = 0; m < MT; ++m)
      for (int v = 0; v < 4; ++v)
        acc[m][v & 1] = _mm256_fmadd_ps(f[v], _mm256_loadu_ps(xb + m * k64 + v * 8), acc[m][v & 1]);
    dec.decode_half(odd, f);
    for (int m = 0; m < MT; ++m)
      for (int v = 0; v < 4; ++v)
        acc[m][v & 1] =
            _mm256_fmadd_ps(f[v], _mm256_loadu_ps(xb + m * k64 + 32 + v * 8), acc[m][v & 1]);
  }
  for (int m = 0; m < MT; ++m) out[m * out_stride] += hsum(_mm256_add_ps(acc[m][0], acc[m][1]));
}

// Batch 1: one row at a time with eight accumulators so the FMA chains never wait.
template <bool kBitmap>
float gemv_row(const Decoder& shared, const BlockSource& s, const float* xp, int64_t nblk) {
  const Decoder dec = shared;  // a local copy: the tables and masks stay in registers
  __m256 acc[8];
  for (auto& a : acc) a = _mm256_setzero_ps();
  for (int64_t blk = 0; blk < nblk; ++blk) {
    __m256i even, odd;
    dec.template indices<kBitmap>(s, blk * 32, even, odd);
    __m256 f[4];
    const float* xb = xp + blk * kBlock;
    dec.decode_half(even, f);
    for (int v = 0; v < 4; ++v) acc[v] = _mm256_fmadd_ps(f[v], _mm256_loadu_ps(xb + v * 8), acc[v]);
    dec.decode_half(odd, f);
    for (int v = 0; v < 4; ++v)
      acc[4 + v] = _mm256_fmadd_ps(f[v], _mm256_loadu_ps(xb + 32 + v * 8), acc[4 + v]);
  }
  for (int v = 1; v < 8; ++v) acc[0] = _mm256_add_ps(acc[0], acc[v]);
  return hsum(acc[0]);
}


constexpr int64_t kChunkBlocks = 8;  // K-chunk of the batched path: 512 columns of every input row

// Batched path: tiles of 4 input rows share each decoded block; K is chunked so the slice of
// x_perm being reused stays in cache while a group of output rows walks over it.
template <int MT, bool kBitmap, typename Source>
void gemm_tile(const Decoder& dec, Source source, const float* xm, int64_t n0, int64_t n1_,
               int64_t k64, int64_t b0, int64_t b1, int64_t n_out, float* ym) {
  for (int64_t n = n0; n < n1_; ++n) row_dot<MT, kBitmap>(dec, source(n), xm, k64, b0, b1, ym + n, n_out);
}

// Loop order keeps one 4-row x tile of a K-chunk (8 KiB) in L1 while every output row of this
// thread's range streams its codes past it.
template <bool kBitmap, typename Source>
void gemm_rows(const Decoder& dec, Source source, const float* xp, int64_t rows, int64_t n0,
               int64_t n1_, int64_t k64, int64_t n_out, float* y) {
  const int64_t nblk = k64 / kBlock;
  for (int64_t b0 = 0; b0 < nblk; b0 += kChunkBlocks) {
    const int64_t b1 = std::min(nblk, b0 + kChunkBlocks);
    int64_t m = 0;
    for (; m + 4 <= rows; m += 4)
      gemm_tile<4, kBitmap>(dec, source, xp + m * k64, n0, n1_, k64, b0, b1, n_out, y + m * n_out);
    const float* xm = xp + m * k64;
    float* ym = y + m * n_out;
    switch (rows - m) {
      case 3: gemm_tile<3, kBitmap>(dec, source, xm, n0, n1_, k64, b0, b1, n_out, ym); break;
      case 2: gemm_tile<2, kBitmap>(dec, source, xm, n0, n1_, k64, b0, b1, n_out, ym); break;
      case 1: gemm_tile<1, kBitmap>(dec, source, xm, n0, n1_, k64, b0, b1, n_out, ym); break;
      default: break;
    }
  }
}

// y (rows, n_out) += x @ W^T, xp = the input permuted with avx2_column (row stride k64).
template <typename Source>
void compute_rows_avx2(const Pow2Table& t, bool bitmap, Source source, const float* xp,
                       int64_t rows, int64_t n_out, int64_t k64, float* y) {
  const Decoder dec(t, bitmap);
  if (rows == 1) {
    at::parallel_for(0, n_out, 16, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n)
        y[n] += bitmap ? gemv_row<true>(dec, source(n), xp, k64 / kBlock)
                       : gemv_row<false>(dec, source(n), xp, k64 / kBlock);
    });
    return;
  }
  at::parallel_for(0, n_out, 16, [&](int64_t begin, int64_t end) {
    if (bitmap)
      gemm_rows<true>(dec, source, xp, rows, begin, end, k64, n_out, y);
    else
      gemm_rows<false>(dec, source, xp, rows, begin, end, k64, n_out, y);
  });
}

}  // namespace
}  // namespace compressor::pow2_cpu
#endif  // __AVX2__ && __FMA__
