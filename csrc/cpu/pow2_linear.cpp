// pow2_linear on CPU: y = x @ W^T + b with W stored as 4-bit power-of-two codes (INQ).
//
// Decoding in registers: a power of two is a bf16 number (sign, exponent, zero mantissa), so its
// 16 high bits are the whole float. Per layer there are only 16 codes, so two 16-byte tables give
// the high and low byte of those 16 bits and one pshufb decodes 32 weights per byte. Unpacking the
// byte pairs into the top half of 32-bit lanes yields the float weights; no float copy of W exists.
// For 5 bits, a zero weight sets bit 7 of its table index, which makes pshufb return 0.
// The unpack order permutes columns inside each 64-column block; the input is permuted once to
// match (x_perm), so the inner loop is loads, byte ops and FMAs only.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <vector>

#include "compressor/checks.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define POW2_AVX2 1
#endif

namespace {

constexpr int64_t kBlock = 64;  // columns per decode step: 32 code bytes

struct Pow2Table {
  alignas(16) uint8_t hi[16];  // bits 31..24 of the float for each 4-bit code
  alignas(16) uint8_t lo[16];  // bits 23..16
  float value[16];             // the same values as floats, for scalar tails and checks
};

Pow2Table make_table(int64_t bits, int64_t n1) {
  Pow2Table t{};
  for (int c = 0; c < 16; ++c) {
    const int m = c & 7;
    const bool zero = bits <= 4 && m == 0;
    const int e = static_cast<int>(bits <= 4 ? n1 - m + 1 : n1 - m);
    float v = zero ? 0.0f : std::ldexp(1.0f, e) * ((c & 8) ? -1.0f : 1.0f);
    uint32_t u;
    std::memcpy(&u, &v, 4);
    t.hi[c] = static_cast<uint8_t>(u >> 24);
    t.lo[c] = static_cast<uint8_t>(u >> 16);
    t.value[c] = v;
  }
  return t;
}

// Column (inside a 64-column block) of lane d of decoded vector v; see decode_block for the order.
inline int64_t block_column(int v, int d) {
  const int parity = v >> 2, unpack_half = (v >> 1) & 1, word_half = v & 1;
  const int byte = (d / 4) * 16 + unpack_half * 8 + 2 * (d % 4) + word_half;
  return 2 * byte + parity;
}

// x (M, K) -> (M, K64) in decode order, zero-padded: padding columns then contribute nothing.
std::vector<float> permute_input(const float* x, int64_t rows, int64_t k, int64_t k64) {
  std::vector<float> xp(static_cast<size_t>(rows * k64), 0.0f);
  int64_t col_of[kBlock];
  for (int v = 0; v < 8; ++v)
    for (int d = 0; d < 8; ++d) col_of[v * 8 + d] = block_column(v, d);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t b = 0; b < k64; b += kBlock)
        for (int64_t i = 0; i < kBlock; ++i) {
          const int64_t col = b + col_of[i];
          if (col < k) xp[r * k64 + b + i] = x[r * k + col];
        }
  });
  return xp;
}

// Loads the 32 code bytes (and 64 bitmap bits) of one block; the last block of a row may be
// partial (K_pad/2 is a multiple of 4 bytes), and what lies past the row reads as zero weights.
struct BlockSource {
  const uint8_t* codes;
  const uint8_t* bitmap;  // nullptr for bits <= 4
  int64_t code_bytes;     // K_pad / 2 per row
};

#ifdef POW2_AVX2
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
#endif  // POW2_AVX2

// Portable path (no AVX2): the same decode through the float table, one weight at a time.
[[maybe_unused]] float scalar_dot(const Pow2Table& t, const BlockSource& s, const float* xp, int64_t k64) {
  float acc = 0.0f;
  for (int64_t i = 0; i < k64; ++i) {
    const int64_t blk = i / kBlock, col = blk * kBlock + block_column(static_cast<int>(i % kBlock / 8),
                                                                      static_cast<int>(i % 8));
    if (col / 2 >= s.code_bytes) continue;
    const int nib = (s.codes[col / 2] >> (4 * (col & 1))) & 0xF;
    const bool nz = s.bitmap == nullptr || ((s.bitmap[col / 8] >> (col % 8)) & 1);
    if (nz) acc += t.value[nib] * xp[i];
  }
  return acc;
}

constexpr int64_t kChunkBlocks = 8;  // K-chunk of the batched path: 512 columns of every input row

// Batched path: tiles of 4 input rows share each decoded block; K is chunked so the slice of
// x_perm being reused stays in cache while a group of output rows walks over it.
#ifdef POW2_AVX2
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
#endif

template <typename Source>
void compute_rows(const Pow2Table& t, bool bitmap, Source source, const float* xp, int64_t rows,
                  int64_t n_out, int64_t k64, float* y) {
#ifdef POW2_AVX2
  const Decoder dec(t, bitmap);
  if (rows == 1) {
    at::parallel_for(0, n_out, 16, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n)
        y[n] = bitmap ? gemv_row<true>(dec, source(n), xp, k64 / kBlock)
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
#else
  (void)bitmap;
  at::parallel_for(0, n_out, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n)
      for (int64_t m = 0; m < rows; ++m) y[m * n_out + n] = scalar_dot(t, source(n), xp + m * k64, k64);
  });
#endif
}

void check_args(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& nonzero,
                const c10::optional<at::Tensor>& bias, int64_t in_features, int64_t bits,
                int64_t n1) {
  const char* op = "pow2_linear";
  CMP_CHECK(bits >= 2 && bits <= 5, op, "bits must be in 2..5, got ", bits);
  CMP_CHECK(n1 >= -119 && n1 <= 127, op, "n1 must be in -119..127, got ", n1);
  CMP_CHECK(in_features >= 0, op, "in_features must be >= 0, got ", in_features);
  CMP_CHECK_DIM(input, 2, op, "input");
  CMP_CHECK_DTYPE(input, at::kFloat, op, "input");
  CMP_CHECK_CONTIGUOUS(input, op, "input");
  CMP_CHECK(input.size(1) == in_features, op, "input has ", input.size(1),
            " columns but in_features is ", in_features);
  const int64_t k_pad = (in_features + 7) / 8 * 8;
  CMP_CHECK_DIM(codes, 2, op, "codes");
  CMP_CHECK_DTYPE(codes, at::kByte, op, "codes");
  CMP_CHECK_CONTIGUOUS(codes, op, "codes");
  CMP_CHECK(codes.size(1) == k_pad / 2, op, "codes must have ", k_pad / 2, " columns for in_features=",
            in_features, ", got shape ", codes.sizes());
  CMP_CHECK_DEVICE(codes, input.device(), op, "codes");
  CMP_CHECK_DTYPE(nonzero, at::kByte, op, "nonzero");
  if (bits == 5) {
    CMP_CHECK_CONTIGUOUS(nonzero, op, "nonzero");
    CMP_CHECK_DEVICE(nonzero, input.device(), op, "nonzero");
    CMP_CHECK(nonzero.dim() == 2 && nonzero.size(0) == codes.size(0) && nonzero.size(1) == k_pad / 8,
              op, "nonzero must have shape (", codes.size(0), ", ", k_pad / 8, ") for bits=5, got ",
              nonzero.sizes());
  } else {
    CMP_CHECK(nonzero.numel() == 0, op, "nonzero must be empty for bits <= 4, got shape ",
              nonzero.sizes());
  }
  if (bias.has_value()) {
    CMP_CHECK_DTYPE(*bias, at::kFloat, op, "bias");
    CMP_CHECK_CONTIGUOUS(*bias, op, "bias");
    CMP_CHECK_DEVICE(*bias, input.device(), op, "bias");
    CMP_CHECK(bias->dim() == 1 && bias->size(0) == codes.size(0), op, "bias must have shape (",
              codes.size(0), "), got ", bias->sizes());
  }
}

at::Tensor pow2_linear_cpu(const at::Tensor& input, const at::Tensor& codes,
                           const at::Tensor& nonzero, const c10::optional<at::Tensor>& bias,
                           int64_t in_features, int64_t bits, int64_t n1) {
  check_args(input, codes, nonzero, bias, in_features, bits, n1);
  const int64_t rows = input.size(0), n_out = codes.size(0), code_bytes = codes.size(1);
  auto out = at::zeros({rows, n_out}, input.options());
  if (rows == 0 || n_out == 0) return out;
  const int64_t k64 = (code_bytes * 2 + kBlock - 1) / kBlock * kBlock;
  const std::vector<float> xp = permute_input(input.data_ptr<float>(), rows, in_features, k64);
  const Pow2Table table = make_table(bits, n1);
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  const uint8_t* bp = bits == 5 ? nonzero.data_ptr<uint8_t>() : nullptr;
  const int64_t bm_bytes = code_bytes / 4;
  float* y = out.data_ptr<float>();
  auto source = [&](int64_t n) {
    return BlockSource{cp + n * code_bytes, bp ? bp + n * bm_bytes : nullptr, code_bytes};
  };
  compute_rows(table, bits == 5, source, xp.data(), rows, n_out, k64, y);
  if (bias.has_value()) out.add_(*bias);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(compressor, CPU, m) { m.impl("pow2_linear", &pow2_linear_cpu); }
