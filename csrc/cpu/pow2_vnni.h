// AVX-512 VNNI path of pow2_linear_int8 (one includer: pow2_int8.cpp; contract and why there).
//
// dpbusd multiplies unsigned by signed bytes, so the weights go in as u = w + 64 (0..128, from a
// 16-entry byte table per code) and the input as signed q; sum q u = sum q w + 64 sum q, and
// 64 * (sum of the row's q) comes off at the end. Low code nibbles hold even columns and high
// ones odd columns, so each 128-column block of the quantized input is stored as its 64 even
// columns then its 64 odd ones, and one vpshufb per 64 weights decodes in that order.
//   One or a few input rows: "dot" tiles decode the codes in registers (MT input x NT output
//   rows) and reduce each dot product at the end.
//   Token batches: each thread decodes a 64-row block of W once into a panel (int8 weights of
//   4 columns x 16 rows per vector, from a transpose of the code dwords), then every input row
//   passes it in tiles of up to 6 rows: per 4 columns, 4 panel loads, 6 broadcasts and 24
//   dpbusd into 24 accumulators that each hold 16 outputs; no horizontal sums.
#pragma once
#include "pow2_int8.h"
#if defined(COMPRESSOR_POW2_VNNI)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cstring>
#include <vector>

namespace compressor::pow2_int8 {
namespace {  // one includer: keep the kernels internal so they inline

// acc += u8 a . s8 b per 4 bytes. Inline asm instead of _mm512_dpbusd_epi32: with the intrinsic
// GCC 12 copied every accumulator through the stack around each dpbusd (measured 2x slower).
inline __m512i dpbusd(__m512i acc, __m512i a, __m512i b) {
  asm("vpdpbusd %[b], %[a], %[acc]" : [acc] "+v"(acc) : [a] "v"(a), [b] "vm"(b));
  return acc;
}

inline __m512i code_table() {  // byte c (of each 128-bit lane) = kCodeInt[c] + 64
  alignas(16) uint8_t t[16];
  for (int c = 0; c < 16; ++c) t[c] = static_cast<uint8_t>(kCodeInt[c] + 64);
  return _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(t)));
}

// Biased weights of the even (low nibble) and odd (high nibble) columns of 64 code bytes.
inline void decode(__m512i table, __m512i c, __m512i& even, __m512i& odd) {
  const __m512i nib = _mm512_set1_epi8(0x0F);
  even = _mm512_shuffle_epi8(table, _mm512_and_si512(c, nib));
  odd = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(c, 4), nib));
}

// Byte i = 2 i: vpermt2b with it picks the even bytes of two registers (odd: add 1).
struct EvenBytes {
  alignas(64) uint8_t v[64];
  constexpr EvenBytes() : v() {
    for (int i = 0; i < 64; ++i) v[i] = static_cast<uint8_t>(2 * i);
  }
};
constexpr EvenBytes kEvenBytes;

inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? 0xFFFF : n <= 0 ? 0 : static_cast<__mmask16>((1u << n) - 1u);
}

RowScale row_scale_avx512(const float* x, int64_t k) {
  __m512 amax = _mm512_setzero_ps();
  const __m512 inf = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  __mmask16 bad = 0;
  for (int64_t i = 0; i < k; i += 16) {
    const __mmask16 m = first_lanes(k - i);
    const __m512 a = _mm512_abs_ps(_mm512_maskz_loadu_ps(m, x + i));
    amax = _mm512_max_ps(amax, a);
    bad |= _mm512_mask_cmp_ps_mask(m, a, inf, _CMP_NLT_UQ);  // inf or NaN
  }
  const float a = _mm512_reduce_max_ps(amax);
  RowScale r;
  r.finite = bad == 0;
  const float inv = 127.0f / a;
  if (r.finite && std::isfinite(inv)) r.inv = inv, r.scale = a / 127.0f;
  return r;
}

// The input, quantized: q (rows, k128) int8 in block order (columns past k are 0), each row's
// scale and sum of q.
struct Quantized {
  at::Tensor q;
  std::vector<RowScale> rs;
  std::vector<int32_t> qsum;
};

Quantized quantize_rows(const float* x, int64_t rows, int64_t k, int64_t k128) {
  Quantized out{at::empty({rows, k128}, at::kChar), std::vector<RowScale>(rows),
                std::vector<int32_t>(rows)};
  int8_t* xq = out.q.data_ptr<int8_t>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    alignas(64) int8_t buf[kBlk];
    for (int64_t m = begin; m < end; ++m) {
      const float* xr = x + m * k;
      const RowScale r = row_scale_avx512(xr, k);
      const __m512 inv = _mm512_set1_ps(r.inv);
      __m512i qsum = _mm512_setzero_si512();
      for (int64_t b = 0; b < k128; b += kBlk) {
        for (int64_t v = 0; v < kBlk; v += 16) {
          const __m512 xv = _mm512_maskz_loadu_ps(first_lanes(k - b - v), xr + b + v);
          __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(xv, inv));  // round half to even
          q = _mm512_min_epi32(_mm512_max_epi32(q, _mm512_set1_epi32(-127)),
                               _mm512_set1_epi32(127));
          qsum = _mm512_add_epi32(qsum, q);
          _mm_store_si128(reinterpret_cast<__m128i*>(buf + v), _mm512_cvtepi32_epi8(q));
        }
        int8_t* dst = xq + m * k128 + b;
#if defined(__AVX512VBMI__)
        const __m512i lo = _mm512_load_si512(buf), hi = _mm512_load_si512(buf + 64);
        const __m512i even = _mm512_load_si512(kEvenBytes.v);
        _mm512_storeu_si512(dst, _mm512_permutex2var_epi8(lo, even, hi));
        _mm512_storeu_si512(dst + 64, _mm512_permutex2var_epi8(
                                          lo, _mm512_add_epi8(even, _mm512_set1_epi8(1)), hi));
#else
        for (int i = 0; i < 64; ++i) dst[i] = buf[2 * i], dst[64 + i] = buf[2 * i + 1];
#endif
      }
      out.rs[m] = r;
      out.qsum[m] = _mm512_reduce_add_epi32(qsum);
    }
  });
  return out;
}

// What turns an output row's int32 sums of q u into floats.
struct Finish {
  const Quantized* in;
  const float* bias;
  float p2;  // 2^(n1 - 6)
  float* y;
  int64_t n_out;

  // y[m, n0 .. n0 + 16) (the first `count`) from the sums of q u.
  inline void store16(int64_t m, int64_t n0, __m512i sums, int64_t count) const {
    const __mmask16 keep = first_lanes(count);
    const RowScale& r = in->rs[m];
    __m512 v;
    if (r.finite) {
      const __m512i acc = _mm512_sub_epi32(sums, _mm512_set1_epi32(64 * in->qsum[m]));
      const __m512 b = bias ? _mm512_maskz_loadu_ps(keep, bias + n0) : _mm512_setzero_ps();
      v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(r.scale * p2), b);
    } else {
      v = _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN());
    }
    _mm512_mask_storeu_ps(y + m * n_out + n0, keep, v);
  }
};

// ---- one or a few input rows: decode in registers, reduce each dot product at the end ----

// acc (MT rows of stride y_stride) += sum of q u over blocks [blk0, blk1) for the NT code rows
// in `cp`; only the first n_valid are real (the others repeat the last).
template <int MT, int NT>
void dot_tile(const uint8_t* const cp[NT], int64_t code_bytes, const int8_t* xq,
              int64_t x_stride, int64_t blk0, int64_t blk1, int32_t* acc_out, int64_t y_stride,
              int n_valid) {
  const __m512i table = code_table();
  __m512i acc[MT][NT];
  // Every loop over MT / NT is unrolled so the accumulators live in registers.
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m)
#pragma GCC unroll 8
    for (int n = 0; n < NT; ++n) acc[m][n] = _mm512_setzero_si512();
  const int64_t last = (code_bytes - 1) / 64;
  const __mmask64 keep = _bzhi_u64(~0ull, static_cast<unsigned>(code_bytes - last * 64));
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    __m512i xe[MT], xo[MT];
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) {
      xe[m] = _mm512_loadu_si512(xq + m * x_stride + blk * kBlk);
      xo[m] = _mm512_loadu_si512(xq + m * x_stride + blk * kBlk + 64);
    }
#pragma GCC unroll 8
    for (int n = 0; n < NT; ++n) {
      // The last block of a row may be partial: a masked load reads nothing past the row; the
      // zero bytes decode to u = 64 and meet q = 0.
      const uint8_t* p = cp[n] + blk * 64;
      __m512i we, wo;
      decode(table, blk == last ? _mm512_maskz_loadu_epi8(keep, p) : _mm512_loadu_si512(p), we,
             wo);
#pragma GCC unroll 8
      for (int m = 0; m < MT; ++m) acc[m][n] = dpbusd(dpbusd(acc[m][n], we, xe[m]), wo, xo[m]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m)
    for (int n = 0; n < n_valid; ++n)
      acc_out[m * y_stride + n] += _mm512_reduce_add_epi32(acc[m][n]);
}

template <int NT, int kMaxMT, int MT = 1>
void dot_rows(int mt, const uint8_t* const cp[NT], int64_t code_bytes, const int8_t* xq,
              int64_t x_stride, int64_t blk0, int64_t blk1, int32_t* acc, int64_t y_stride,
              int n_valid) {
  if constexpr (MT < kMaxMT) {
    if (mt > MT)
      return dot_rows<NT, kMaxMT, MT + 1>(mt, cp, code_bytes, xq, x_stride, blk0, blk1, acc,
                                          y_stride, n_valid);
  }
  dot_tile<MT, NT>(cp, code_bytes, xq, x_stride, blk0, blk1, acc, y_stride, n_valid);
}

// Threads split the output rows in tiles of NT; K is chunked so the input slice of all rows
// (<= 512 KiB) stays in L2 while the n-tiles pass; balanced m-tiles of up to kMaxMT rows.
template <int NT, int kMaxMT>
void run_dot(const uint8_t* codes, int64_t code_bytes, const Quantized& in, int64_t n_out,
             int64_t k128, const Finish& fin) {
  const int64_t rows = in.q.size(0), nblk = k128 / kBlk, n_tiles = (n_out + NT - 1) / NT;
  const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 19) / (rows * kBlk));
  const int64_t m_tiles = (rows + kMaxMT - 1) / kMaxMT;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / (NT * rows * k128));
  at::Tensor acc_t = at::zeros({rows, n_out}, at::kInt);
  int32_t* acc = acc_t.data_ptr<int32_t>();
  const int8_t* xq = in.q.data_ptr<int8_t>();
  at::parallel_for(0, n_tiles, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b0 = 0; b0 < nblk; b0 += chunk) {
      const int64_t b1 = std::min(nblk, b0 + chunk);
      for (int64_t tn = begin; tn < end; ++tn) {
        const int64_t n0 = tn * NT;
        const int n_valid = static_cast<int>(std::min<int64_t>(NT, n_out - n0));
        const uint8_t* cp[NT];
        for (int n = 0; n < NT; ++n) cp[n] = codes + (n0 + std::min(n, n_valid - 1)) * code_bytes;
        for (int64_t tm = 0; tm < m_tiles; ++tm) {
          const int64_t m0 = tm * rows / m_tiles, m1 = (tm + 1) * rows / m_tiles;
          dot_rows<NT, kMaxMT>(static_cast<int>(m1 - m0), cp, code_bytes, xq + m0 * k128, k128,
                               b0, b1, acc + m0 * n_out + n0, n_out, n_valid);
        }
      }
    }
    for (int64_t m = 0; m < rows; ++m)  // this thread's columns are final now
      for (int64_t n0 = begin * NT; n0 < std::min(n_out, end * NT); n0 += 16) {
        const int64_t count = std::min<int64_t>(16, std::min(n_out, end * NT) - n0);
        fin.store16(m, n0, _mm512_maskz_loadu_epi32(first_lanes(count), acc + m * n_out + n0),
                    count);
      }
  });
}

// ---- token batches: a decoded panel per 64-row block of W, reused by every input row ----
constexpr int kPanelRows = 64;
constexpr int64_t kPanelMinRows = 8;  // fewer rows: the panel build costs more than it saves

// Transposes 16 rows of 16 dwords in place (r[i] lane j <- r[j] lane i).
inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 4; ++i) {
      t[8 * h + i] = _mm512_shuffle_i32x4(r[8 * h + i], r[8 * h + 4 + i], 0x88);
      t[8 * h + 4 + i] = _mm512_shuffle_i32x4(r[8 * h + i], r[8 * h + 4 + i], 0xdd);
    }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0x88);
    r[8 + i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0xdd);
  }
}

// The panel of output rows [n0, n0 + 64): for each 4-byte input group g, 64 bytes per 16 rows.
// Code dword d of a block holds columns 8d..8d+7: its low nibbles are input positions 4d..4d+3
// of the block (even columns first), its high nibbles positions 64 + 4d.., so one transpose of
// the code dwords of 16 rows and two lookups give both groups. Rows past n_out read as code 0.
void build_panel(const uint8_t* codes, int64_t code_bytes, int64_t n0, int64_t n_out,
                 int64_t nblk, uint8_t* panel) {
  const __m512i table = code_table();
  const int64_t last = (code_bytes - 1) / 64;
  const __mmask64 keep = _bzhi_u64(~0ull, static_cast<unsigned>(code_bytes - last * 64));
  for (int grp = 0; grp < kPanelRows / 16; ++grp) {
    const int64_t r0 = n0 + 16 * grp;
    for (int64_t blk = 0; blk < nblk; ++blk) {
      __m512i v[16];
      for (int r = 0; r < 16; ++r) {
        const uint8_t* p = codes + (r0 + r) * code_bytes + blk * 64;
        v[r] = r0 + r >= n_out ? _mm512_setzero_si512()
               : blk == last   ? _mm512_maskz_loadu_epi8(keep, p)
                               : _mm512_loadu_si512(p);
      }
      transpose16(v);
      uint8_t* out = panel + blk * 32 * kPanelRows * 4 + grp * 64;
      for (int d = 0; d < 16; ++d) {
        __m512i lo, hi;
        decode(table, v[d], lo, hi);
        _mm512_store_si512(out + d * kPanelRows * 4, lo);
        _mm512_store_si512(out + (16 + d) * kPanelRows * 4, hi);
      }
    }
  }
}

// Output rows m0 .. m0 + MT, columns n0 .. n0 + n_valid, from the panel and the input.
template <int MT>
void panel_tile(const uint8_t* panel, int64_t groups, const int8_t* xq, int64_t x_stride,
                int64_t m0, int64_t n0, int64_t n_valid, const Finish& fin) {
  __m512i c[MT][4];
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m) c[m][0] = c[m][1] = c[m][2] = c[m][3] = _mm512_setzero_si512();
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* pg = panel + g * kPanelRows * 4;
    const __m512i b0 = _mm512_load_si512(pg), b1 = _mm512_load_si512(pg + 64);
    const __m512i b2 = _mm512_load_si512(pg + 128), b3 = _mm512_load_si512(pg + 192);
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) {
      int32_t word;
      std::memcpy(&word, xq + m * x_stride + 4 * g, 4);
      const __m512i a = _mm512_set1_epi32(word);
      c[m][0] = dpbusd(c[m][0], b0, a);
      c[m][1] = dpbusd(c[m][1], b1, a);
      c[m][2] = dpbusd(c[m][2], b2, a);
      c[m][3] = dpbusd(c[m][3], b3, a);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v)
      if (n_valid > 16 * v) fin.store16(m0 + m, n0 + 16 * v, c[m][v], n_valid - 16 * v);
}

template <int kMaxMT, int MT = 1>
void panel_rows(int mt, const uint8_t* panel, int64_t groups, const int8_t* xq,
                int64_t x_stride, int64_t m0, int64_t n0, int64_t n_valid, const Finish& fin) {
  if constexpr (MT < kMaxMT) {
    if (mt > MT)
      return panel_rows<kMaxMT, MT + 1>(mt, panel, groups, xq, x_stride, m0, n0, n_valid, fin);
  }
  panel_tile<MT>(panel, groups, xq, x_stride, m0, n0, n_valid, fin);
}

// Threads split W into 64-row blocks; each builds its block's panel (64 x k128 bytes: in L2 for
// BERT-sized K) and runs every input row past it in balanced tiles of up to 6 rows.
void run_panels(const uint8_t* codes, int64_t code_bytes, const Quantized& in, int64_t n_out,
                int64_t k128, const Finish& fin) {
  constexpr int kMaxMT = 6;
  const int64_t rows = in.q.size(0), nblk = k128 / kBlk;
  const int64_t n_blocks = (n_out + kPanelRows - 1) / kPanelRows;
  const int64_t m_tiles = (rows + kMaxMT - 1) / kMaxMT;
  const int8_t* xq = in.q.data_ptr<int8_t>();
  at::parallel_for(0, n_blocks, 1, [&](int64_t begin, int64_t end) {
    at::Tensor panel_t = at::empty({std::max<int64_t>(1, k128 * kPanelRows)}, at::kByte);
    uint8_t* panel = panel_t.data_ptr<uint8_t>();  // the allocator aligns to 64 bytes
    for (int64_t nb = begin; nb < end; ++nb) {
      const int64_t n0 = nb * kPanelRows, n_valid = std::min<int64_t>(kPanelRows, n_out - n0);
      build_panel(codes, code_bytes, n0, n_out, nblk, panel);
      for (int64_t tm = 0; tm < m_tiles; ++tm) {
        const int64_t m0 = tm * rows / m_tiles, m1 = (tm + 1) * rows / m_tiles;
        panel_rows<kMaxMT>(static_cast<int>(m1 - m0), panel, k128 / 4, xq + m0 * k128, k128,
                           m0, n0, n_valid, fin);
      }
    }
  });
}

void compute_vnni(const float* x, const uint8_t* codes, int64_t code_bytes, const float* bias,
                  int64_t rows, int64_t n_out, int64_t k, int n1, float* y) {
  const int64_t k128 = (k + kBlk - 1) / kBlk * kBlk;
  const Quantized in = quantize_rows(x, rows, k, k128);
  const Finish fin{&in, bias, std::ldexp(1.0f, n1 - 6), y, n_out};
  if (rows == 1)
    run_dot<8, 1>(codes, code_bytes, in, n_out, k128, fin);
  else if (rows < kPanelMinRows)
    run_dot<3, 4>(codes, code_bytes, in, n_out, k128, fin);
  else
    run_panels(codes, code_bytes, in, n_out, k128, fin);
}

}  // namespace
}  // namespace compressor::pow2_int8
#endif  // COMPRESSOR_POW2_VNNI
