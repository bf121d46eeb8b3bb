// Pieces every CPU path of pow2_linear shares: the per-layer decode table, where a row's codes
// live, and the one-time permutation of the input into a path's decode order.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "compressor/checks.h"
#include "compressor/pow2_checks.h"

namespace compressor::pow2_cpu {

enum class Isa { kScalar, kAvx2, kAvx512 };

// The best compiled-in path, or a slower one that COMPRESSOR_POW2_ISA asks for (read per call,
// a few hundred nanoseconds, so a test can switch paths in one process). `best` is what the
// calling op built; an op with fewer paths passes its own.
inline Isa pick_isa(const char* op, Isa best) {
  const char* want = std::getenv("COMPRESSOR_POW2_ISA");
  if (want == nullptr || *want == '\0') return best;
  const bool scalar = std::strcmp(want, "scalar") == 0, avx2 = std::strcmp(want, "avx2") == 0;
  CMP_CHECK(scalar || avx2, op, "COMPRESSOR_POW2_ISA must be 'avx2' or 'scalar' (or unset for "
            "the best path built), got '", want, "'");
  if (scalar) return Isa::kScalar;
  // avx2 on a build without AVX2 keeps the best path built (the scalar one), as documented.
  return best == Isa::kAvx512 ? Isa::kAvx2 : best;
}

inline Isa pick_isa(const char* op) {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__BMI2__)
  return pick_isa(op, Isa::kAvx512);
#elif defined(__AVX2__) && defined(__FMA__)
  return pick_isa(op, Isa::kAvx2);
#else
  return pick_isa(op, Isa::kScalar);
#endif
}

struct Pow2Table {
  alignas(64) float value[16];  // the float weight of each 4-bit code
  alignas(16) uint8_t hi[16];   // bits 31..24 of value[c]: a power of two is a bf16 number
  alignas(16) uint8_t lo[16];   // bits 23..16
};

inline Pow2Table make_table(int64_t bits, int64_t n1) {
  Pow2Table t{};
  for (int c = 0; c < 16; ++c) {
    const int m = c & 7;
    const bool zero = bits <= 4 && m == 0;
    const int e = static_cast<int>(bits <= 4 ? n1 - m + 1 : n1 - m);
    const float v = zero ? 0.0f : std::ldexp(1.0f, e) * ((c & 8) ? -1.0f : 1.0f);
    uint32_t u;
    std::memcpy(&u, &v, 4);
    t.hi[c] = static_cast<uint8_t>(u >> 24);
    t.lo[c] = static_cast<uint8_t>(u >> 16);
    t.value[c] = v;
  }
  return t;
}

// The packed-weight and input contract of the pow2 block of csrc/ops.cpp (CPU, float32 input).
inline void check_pow2_args(const char* op, const at::Tensor& input, const at::Tensor& codes,
                            const at::Tensor& nonzero, const c10::optional<at::Tensor>& bias,
                            int64_t in_features, int64_t bits, int64_t n1) {
  compressor::check_pow2_format(op, bits, n1, in_features);
  CMP_CHECK_DIM(input, 2, op, "input");
  CMP_CHECK_DTYPE(input, at::kFloat, op, "input");
  CMP_CHECK_CONTIGUOUS(input, op, "input");
  CMP_CHECK(input.size(1) == in_features, op, "input has ", input.size(1),
            " columns but in_features is ", in_features);
  const int64_t k_pad = (in_features + 7) / 8 * 8;
  CMP_CHECK_DIM(codes, 2, op, "codes");
  CMP_CHECK_DTYPE(codes, at::kByte, op, "codes");
  CMP_CHECK_CONTIGUOUS(codes, op, "codes");
  CMP_CHECK(codes.size(1) == k_pad / 2, op, "codes must have ", k_pad / 2,
            " columns for in_features=", in_features, ", got shape ", codes.sizes());
  CMP_CHECK_DEVICE(codes, input.device(), op, "codes");
  CMP_CHECK_DTYPE(nonzero, at::kByte, op, "nonzero");
  if (bits == 5) {
    CMP_CHECK_CONTIGUOUS(nonzero, op, "nonzero");
    CMP_CHECK_DEVICE(nonzero, input.device(), op, "nonzero");
    CMP_CHECK(nonzero.dim() == 2 && nonzero.size(0) == codes.size(0) &&
                  nonzero.size(1) == k_pad / 8,
              op, "nonzero must have shape (", codes.size(0), ", ", k_pad / 8,
              ") for bits=5, got ", nonzero.sizes());
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

// One output row's packed weights: K_pad/2 code bytes and, for 5 bits, K_pad/8 bitmap bytes.
struct BlockSource {
  const uint8_t* codes;
  const uint8_t* bitmap;  // nullptr for bits <= 4
  int64_t code_bytes;     // K_pad / 2 (a multiple of 4)
};

// x (M, K) -> (M, K rounded up to `block`): position i of each block holds column
// block_start + column_of(i), so a path's inner loop reads the input in its decode order with
// plain vector loads. Padding is zero, so padded weights (whatever they decode to: all are
// finite) contribute nothing. The torch allocator aligns rows of a multiple of 64 bytes.
template <typename ColumnOf>
at::Tensor permute_input(const float* x, int64_t rows, int64_t k, int64_t block,
                         ColumnOf column_of) {
  const int64_t k_round = (k + block - 1) / block * block;
  at::Tensor out = at::zeros({rows, k_round}, at::kFloat);
  float* xp = out.data_ptr<float>();
  std::vector<int64_t> col_of(static_cast<size_t>(block));
  for (int64_t i = 0; i < block; ++i) col_of[i] = column_of(i);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t b = 0; b < k_round; b += block)
        for (int64_t i = 0; i < block; ++i) {
          const int64_t col = b + col_of[i];
          if (col < k) xp[r * k_round + b + i] = x[r * k + col];
        }
  });
  return out;
}

}  // namespace compressor::pow2_cpu
