// AVX-512 path of pow2_linear (format: compressor/quantization/packing.py; AVX2: pow2_avx2.h).
//
// vpermps is a 16-entry float table lookup that reads only bits 0-3 of each 32-bit index lane,
// and a layer has only 16 codes. So the 64 code bytes of a 128-column block decode as 8 vectors:
// shift the block right by 4 s and look up; lane j of vector s is column 8 j + s. One shift and
// one vpermps per 16 weights, no unpacking and no float copy of W. The input is permuted once to
// that order (avx512_column). For 5 bits a zero weight has code 0 (which means 2^n1), so the
// bitmap becomes the write mask of the lookup.
//
// Register tile: MT input rows x NT output rows. Each decoded weight vector feeds MT FMAs and
// each input vector NT FMAs; the MT x NT accumulators are dot-product partial sums reduced once
// per K chunk. Codes are read straight from the row (a tile's rows stay in L1 while the m-tiles of
// a chunk pass), and K is chunked so the input slice of all rows stays in L2.
#pragma once
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__BMI2__)
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "pow2_common.h"

namespace compressor::pow2_cpu {
namespace {  // one includer (pow2_linear.cpp): keep the kernels internal so they inline

constexpr int64_t kBlock512 = 128;  // columns per block: 64 code bytes, 16 bitmap bytes

inline int64_t avx512_column(int64_t i) { return 8 * (i % 16) + i / 16; }

// mask[s] bit j = nonzero bit of column 8 j + s of the block = bit s of bitmap byte j: a 16 x 8
// bit-matrix transpose.
inline void bitmap_masks(const uint8_t* bm16, uint16_t mask[8]) {
#if defined(__GFNI__)
  // gf2p8affine with x byte s = 1 << s returns, per qword, byte s bit i = bit s of matrix byte
  // 7 - i; reversing the bitmap bytes in each qword first makes that bit s of bitmap byte i.
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bm16));
  const __m128i rev = _mm_shuffle_epi8(b, _mm_setr_epi8(7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12,
                                                        11, 10, 9, 8));
  const __m128i t = _mm_gf2p8affine_epi64_epi8(
      _mm_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull)), rev, 0);
  // Bytes s (columns of bitmap bytes 0-7) and 8 + s (bytes 8-15) form the 16-bit mask s.
  const __m128i m = _mm_shuffle_epi8(t, _mm_setr_epi8(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6,
                                                      14, 7, 15));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(mask), m);
#else
  uint64_t q0, q1;
  std::memcpy(&q0, bm16, 8);
  std::memcpy(&q1, bm16 + 8, 8);
  for (int s = 0; s < 8; ++s) {
    const uint64_t sel = 0x0101010101010101ull << s;
    mask[s] = static_cast<uint16_t>(_pext_u64(q0, sel) | (_pext_u64(q1, sel) << 8));
  }
#endif
}

// acc[m][n] += decoded block of row n (codes cp[n]) * block of input row m, lane-wise.
template <int MT, int NT, bool kBitmap>
inline void tile_block(__m512 table, const uint8_t* const cp[NT], const uint16_t (*mask)[8],
                       const float* xb, int64_t x_stride, __m512 acc[MT][NT]) {
#pragma GCC unroll 8
  for (int s = 0; s < 8; ++s) {
    __m512 w[NT];
    for (int n = 0; n < NT; ++n) {
      // Measured no faster here: loading 1-3 bytes further on instead of shifting (those loads
      // split cache lines), or moving some shifts to port 5 (vpshufb, vpmultishiftqb).
      const __m512i idx = _mm512_srli_epi32(_mm512_loadu_si512(cp[n]), 4 * s);
      w[n] = kBitmap ? _mm512_maskz_permutexvar_ps(mask[n][s], idx, table)
                     : _mm512_permutexvar_ps(idx, table);
    }
    for (int m = 0; m < MT; ++m) {
      const __m512 x = _mm512_loadu_ps(xb + m * x_stride + 16 * s);
      for (int n = 0; n < NT; ++n) acc[m][n] = _mm512_fmadd_ps(w[n], x, acc[m][n]);
    }
  }
}

// Code pointer and masks of a row's last block `blk`: when partial it is copied, zero padded,
// into `buf` (masked loads never touch memory past the row).
template <bool kBitmap>
inline const uint8_t* block_codes(const BlockSource& src, int64_t blk, uint8_t* buf,
                                  uint16_t mask[8]) {
  const int64_t byte0 = blk * 64, left = src.code_bytes - byte0;
  const uint8_t* cp = src.codes + byte0;
  if (left < 64) {
    const __mmask64 keep = _bzhi_u64(~0ull, static_cast<unsigned>(left));
    _mm512_storeu_si512(buf, _mm512_maskz_loadu_epi8(keep, cp));
    cp = buf;
  }
  if constexpr (kBitmap) {
    const uint8_t* bp = src.bitmap + blk * 16;
    alignas(16) uint8_t bm[16];
    if (left < 64) {
      const __mmask16 keep = _bzhi_u32(~0u, static_cast<unsigned>(left / 4));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(bm), _mm_maskz_loadu_epi8(keep, bp));
      bp = bm;
    }
    bitmap_masks(bp, mask);
  }
  return cp;
}

// y[m, n] += sum over blocks [blk0, blk1) for MT input rows and the NT rows of `src`; only the
// first n_valid output rows are real (the rest repeat the last row to fill the tile).
template <int MT, int NT, bool kBitmap>
void tile(__m512 table, const BlockSource src[NT], const float* xp, int64_t x_stride,
          int64_t blk0, int64_t blk1, float* y, int64_t y_stride, int n_valid) {
  __m512 acc[MT][NT];
  for (auto& row : acc)
    for (auto& a : row) a = _mm512_setzero_ps();
  alignas(64) uint8_t buf[NT][64];
  uint16_t mask[NT][8] = {};
  // Every block but a row's last is read in place, with no per-row test in the loop (scalar work
  // here competes with the vector ports).
  const int64_t last = (src[0].code_bytes - 1) / 64;
  const uint8_t* cp[NT];
  for (int n = 0; n < NT; ++n) cp[n] = src[n].codes + blk0 * 64;
  int64_t blk = blk0;
  for (; blk < std::min(blk1, last); ++blk) {
    if constexpr (kBitmap)
      for (int n = 0; n < NT; ++n) bitmap_masks(src[n].bitmap + blk * 16, mask[n]);
    tile_block<MT, NT, kBitmap>(table, cp, mask, xp + blk * kBlock512, x_stride, acc);
    for (int n = 0; n < NT; ++n) cp[n] += 64;
  }
  if (blk < blk1) {  // blk == last
    for (int n = 0; n < NT; ++n) cp[n] = block_codes<kBitmap>(src[n], blk, buf[n], mask[n]);
    tile_block<MT, NT, kBitmap>(table, cp, mask, xp + blk * kBlock512, x_stride, acc);
  }
  for (int m = 0; m < MT; ++m)
    for (int n = 0; n < n_valid; ++n) y[m * y_stride + n] += _mm512_reduce_add_ps(acc[m][n]);
}

template <int NT, int kMaxMT, bool kBitmap>
void tile_rows(int mt, __m512 table, const BlockSource src[NT], const float* xp,
               int64_t x_stride, int64_t blk0, int64_t blk1, float* y, int64_t y_stride,
               int n_valid) {
  switch (mt) {
#define POW2_TILE_CASE(MT)                                                                      \
  case MT:                                                                                      \
    if constexpr (MT <= kMaxMT && MT * NT + NT + 2 <= 32)                                      \
      tile<MT, NT, kBitmap>(table, src, xp, x_stride, blk0, blk1, y, y_stride, n_valid);        \
    break;
    POW2_TILE_CASE(1) POW2_TILE_CASE(2) POW2_TILE_CASE(3)
    POW2_TILE_CASE(4) POW2_TILE_CASE(5) POW2_TILE_CASE(6) POW2_TILE_CASE(7) POW2_TILE_CASE(8)
#undef POW2_TILE_CASE
    default: break;
  }
}

// Threads split the output rows in tiles of NT. Loop nest, innermost last: K chunks -> n-tiles
// -> m-tiles -> blocks of the chunk, so a tile's codes stay in L1 while the m-tiles pass and the
// input slice of one chunk (all rows, <= 1 MiB) stays in L2. (Measured slower here: L1-sized
// chunks with m-tiles outside n-tiles, which add reductions and walk codes in short pieces, and
// software prefetch of the codes 8 blocks ahead.)
template <int NT, int kMaxMT, bool kBitmap, typename Source>
void compute_tiles(const Pow2Table& t, Source source, const float* xp, int64_t rows,
                   int64_t n_out, int64_t k128, float* y) {
  const __m512 table = _mm512_load_ps(t.value);
  const int64_t nblk = k128 / kBlock512, n_tiles = (n_out + NT - 1) / NT;
  const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 20) / (rows * kBlock512 * 4));
  const int64_t m_tiles = (rows + kMaxMT - 1) / kMaxMT;
  // Enough multiply-adds per task that a thread hand-off (a few microseconds) is worth it.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / (NT * rows * k128));
  at::parallel_for(0, n_tiles, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b0 = 0; b0 < nblk; b0 += chunk) {
      const int64_t b1 = std::min(nblk, b0 + chunk);
      for (int64_t tn = begin; tn < end; ++tn) {
        const int64_t n0 = tn * NT;
        const int n_valid = static_cast<int>(std::min<int64_t>(NT, n_out - n0));
        BlockSource src[NT];
        for (int n = 0; n < NT; ++n) src[n] = source(n0 + std::min(n, n_valid - 1));
        // Balanced m-tiles (sizes differ by at most one): batch 12 runs as 6 + 6, not 8 + 4.
        for (int64_t tm = 0; tm < m_tiles; ++tm) {
          const int64_t m0 = tm * rows / m_tiles, m1 = (tm + 1) * rows / m_tiles;
          tile_rows<NT, kMaxMT, kBitmap>(static_cast<int>(m1 - m0), table, src, xp + m0 * k128,
                                         k128, b0, b1, y + m0 * n_out + n0, n_out, n_valid);
        }
      }
    }
  });
}

// y (rows, n_out) += x @ W^T, xp = the input permuted with avx512_column (row stride k128).
// Per 16 columns a tile spends NT shifts + NT lookups on MT x NT FMAs (all on the two 512-bit
// ports), so more input rows per tile amortise the decode: 8 x 3 uses 29 of the 32 registers
// (measured a little faster than 6 x 4 and 4 x 4). One input row: 1 x 8, eight FMA chains.
template <bool kBitmap, typename Source>
void compute_rows_avx512(const Pow2Table& t, Source source, const float* xp, int64_t rows,
                         int64_t n_out, int64_t k128, float* y) {
  if (rows == 1)
    compute_tiles<8, 1, kBitmap>(t, source, xp, rows, n_out, k128, y);
  else
    compute_tiles<3, 8, kBitmap>(t, source, xp, rows, n_out, k128, y);
}

}  // namespace
}  // namespace compressor::pow2_cpu
#endif  // __AVX512F__ && __AVX512BW__ && __BMI2__
