// pow2_linear on CPU: y = x @ W^T + b with W stored as 4-bit power-of-two codes (INQ; format in
// compressor/quantization/packing.py). The weights are decoded in registers from the codes and a
// 16-entry table of the layer's levels; no float copy of W is ever made.
//
// Three paths, picked at compile time (-march): AVX-512 (pow2_avx512.h), AVX2 (pow2_avx2.h) and a
// scalar loop. Each vector path reads the input in its own decode order, so the input is permuted
// once per call (pow2_common.h). COMPRESSOR_POW2_ISA=avx2|scalar selects a slower path that is
// compiled in as well, so the tests can check every path on one machine.
// GCC 12 warns "'__Y' may be used uninitialized" inside its own AVX-512 intrinsics (the
// _mm512_undefined_* placeholders of srli/extract/permutexvar; GCC bug 105593), once per
// instantiation. The diagnostic points into avx512fintrin.h, so it is silenced for this file.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "pow2_avx2.h"
#include "pow2_avx512.h"
#include "pow2_common.h"

namespace {

using namespace compressor::pow2_cpu;

// Portable path: the float table, one weight at a time, on the input as given. Partial sums
// per 128 columns: one running float sum over thousands of columns drifts past the tolerance the
// vector paths (16 lanes of partial sums) meet; measured 2e-4 at K = 4200.
float scalar_dot(const Pow2Table& t, const BlockSource& s, const float* x, int64_t k) {
  float acc = 0.0f;
  for (int64_t col0 = 0; col0 < k; col0 += 128) {
    float part = 0.0f;
    for (int64_t col = col0; col < std::min(k, col0 + 128); ++col) {
      const int nib = (s.codes[col / 2] >> (4 * (col & 1))) & 0xF;
      const bool nz = s.bitmap == nullptr || ((s.bitmap[col / 8] >> (col % 8)) & 1);
      // A zero weight still multiplies: 0 * NaN must stay NaN, as in F.linear.
      part += (nz ? t.value[nib] : 0.0f) * x[col];
    }
    acc += part;
  }
  return acc;
}

template <typename Source>
void compute_scalar(const Pow2Table& t, Source source, const float* x, int64_t rows,
                    int64_t n_out, int64_t k, float* y) {
  at::parallel_for(0, n_out, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n)
      for (int64_t m = 0; m < rows; ++m) y[m * n_out + n] += scalar_dot(t, source(n), x + m * k, k);
  });
}

// y (rows, n_out) += x @ W^T on the chosen path.
template <typename Source>
void compute(Isa isa, const Pow2Table& t, bool bitmap, Source source, const float* x,
             int64_t rows, int64_t n_out, int64_t k, float* y) {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__BMI2__)
  if (isa == Isa::kAvx512) {
    const at::Tensor xp = permute_input(x, rows, k, kBlock512, avx512_column);
    if (bitmap)
      compute_rows_avx512<true>(t, source, xp.data_ptr<float>(), rows, n_out, xp.size(1), y);
    else
      compute_rows_avx512<false>(t, source, xp.data_ptr<float>(), rows, n_out, xp.size(1), y);
    return;
  }
#endif
#if defined(__AVX2__) && defined(__FMA__)
  if (isa == Isa::kAvx2) {
    const at::Tensor xp = permute_input(x, rows, k, kBlock, avx2_column);
    compute_rows_avx2(t, bitmap, source, xp.data_ptr<float>(), rows, n_out, xp.size(1), y);
    return;
  }
#endif
  (void)bitmap;
  compute_scalar(t, source, x, rows, n_out, k, y);
}

at::Tensor pow2_linear_cpu(const at::Tensor& input, const at::Tensor& codes,
                           const at::Tensor& nonzero, const c10::optional<at::Tensor>& bias,
                           int64_t in_features, int64_t bits, int64_t n1) {
  check_pow2_args("pow2_linear", input, codes, nonzero, bias, in_features, bits, n1);
  const int64_t rows = input.size(0), n_out = codes.size(0), code_bytes = codes.size(1);
  // The kernels accumulate into y, so it starts as the bias (one pass, no add afterwards). Not
  // expand().contiguous(): for one row that is the bias itself, which the kernel would overwrite.
  at::Tensor out = at::empty({rows, n_out}, input.options());
  if (bias.has_value())
    out.copy_(bias->expand({rows, n_out}));
  else
    out.zero_();
  if (rows == 0 || n_out == 0 || in_features == 0) return out;
  const Pow2Table table = make_table(bits, n1);
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  const uint8_t* bp = bits == 5 ? nonzero.data_ptr<uint8_t>() : nullptr;
  const int64_t bm_bytes = code_bytes / 4;
  auto source = [&](int64_t n) {
    return BlockSource{cp + n * code_bytes, bp ? bp + n * bm_bytes : nullptr, code_bytes};
  };
  compute(pick_isa("pow2_linear"), table, bits == 5, source, input.data_ptr<float>(), rows, n_out,
          in_features, out.data_ptr<float>());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(compressor, CPU, m) { m.impl("pow2_linear", &pow2_linear_cpu); }
