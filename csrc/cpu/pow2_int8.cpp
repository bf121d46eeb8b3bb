// pow2_linear_int8 on CPU: y = x @ W^T + b with W as 4-bit power-of-two codes (bits <= 4) and
// each input row quantized to int8 at run time, as torch's dynamic int8 Linear does. Contract:
// the pow2 block of csrc/ops.cpp; the twin is reference.pow2_linear_int8.
//
// Why int8: at token batches an fp32 kernel cannot beat fbgemm's int8 Linear, whatever it does
// with the codes: a VNNI dpbusd does 64 multiply-adds where an fp32 FMA does 16 (measured on
// this project's AMD EPYC, 1 thread, 768x3072 at 128 rows: MKL fp32 44 GMAC/s, fbgemm int8
// 200). A 4-bit code's weight is s * 2^(n1 - 6) with s in {0, +-1, ..., +-64}, an int8, so the
// weights stay exact; only the input is rounded (per row, 255 levels: finer than fbgemm's
// per-tensor 7-bit default).
//
// AVX-512 VNNI path: one vpshufb per 64 weights decodes codes into int8 weights in registers
// (a 16-entry table, the same for every layer); dpbusd multiplies unsigned bytes by signed ones,
// so the input is stored as q + 128 and 128 * (row sum of W) is taken off at the end (the row
// sums come from an extra "row" of ones in the first m-tile). Low nibbles hold even columns and
// high nibbles odd ones, so each 128-column block of the quantized input is stored as its 64
// even columns then its 64 odd ones. Scalar path: the same integers, plain loops.
// GCC 12 warns inside its own AVX-512 intrinsics (GCC bug 105593); see pow2_linear.cpp.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "pow2_common.h"

#include "pow2_int8.h"
#include "pow2_vnni.h"

namespace {

using namespace compressor::pow2_cpu;
using namespace compressor::pow2_int8;
constexpr const char* kOp = "pow2_linear_int8";
// Every |sum| stays below 255 * 64 * K: K up to this keeps the int32 sums exact.
constexpr int64_t kMaxK = 131072;

void compute_scalar(const float* x, const uint8_t* codes, int64_t code_bytes, const float* bias,
                    int64_t rows, int64_t n_out, int64_t k, int n1, float* y) {
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> q(k), acc(n_out);
    for (int64_t m = begin; m < end; ++m) {
      const RowScale r = row_scale(x + m * k, k);
      for (int64_t i = 0; i < k; ++i) q[i] = quantize(x[m * k + i], r.inv);
      for (int64_t n = 0; n < n_out; ++n) {
        const uint8_t* c = codes + n * code_bytes;
        int32_t sum = 0;
        for (int64_t i = 0; i < k; ++i) sum += q[i] * kCodeInt[(c[i / 2] >> (4 * (i & 1))) & 15];
        acc[n] = sum;
      }
      finish_row(acc.data(), r, n1, bias, n_out, y + m * n_out);
    }
  });
}


at::Tensor pow2_linear_int8_cpu(const at::Tensor& input, const at::Tensor& codes,
                                const at::Tensor& nonzero, const c10::optional<at::Tensor>& bias,
                                int64_t in_features, int64_t bits, int64_t n1) {
  check_pow2_args(kOp, input, codes, nonzero, bias, in_features, bits, n1);
  CMP_CHECK(bits <= 4, kOp, "bits must be <= 4 (a 5-bit level, 128 * 2^(n1 - 7), is no int8), "
            "got ", bits, "; use pow2_linear");
  CMP_CHECK(in_features <= kMaxK, kOp, "in_features must be <= ", kMaxK,
            " (the int32 sums would overflow), got ", in_features);
  const int64_t rows = input.size(0), n_out = codes.size(0);
  at::Tensor out = at::empty({rows, n_out}, input.options());
  if (out.numel() == 0) return out;
  if (in_features == 0) {  // no inputs to quantize: y = bias, as F.linear gives
    if (bias.has_value())
      out.copy_(bias->expand({rows, n_out}));
    else
      out.zero_();
    return out;
  }
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  const float* x = input.data_ptr<float>();
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  float* y = out.data_ptr<float>();
  const int n1i = static_cast<int>(n1);
#if defined(COMPRESSOR_POW2_VNNI)
  if (pick_isa(kOp, Isa::kAvx512) == Isa::kAvx512) {
    compute_vnni(x, cp, codes.size(1), b, rows, n_out, in_features, n1i, y);
    return out;
  }
#endif
  // COMPRESSOR_POW2_ISA=avx2 has no AVX2 path of its own here: it runs the scalar one.
  (void)pick_isa(kOp, Isa::kScalar);
  compute_scalar(x, cp, codes.size(1), b, rows, n_out, in_features, n1i, y);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(compressor, CPU, m) { m.impl("pow2_linear_int8", &pow2_linear_int8_cpu); }
