// Pieces every CPU path of pow2_linear shares: the per-layer decode table, where a row's codes
// live, and the one-time permutation of the input into a path's decode order.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace compressor::pow2_cpu {

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
