// compressor::sparse_linear on CPU: y = x W^T + b with W (N_out, K) in CSR.
// One input row (SpMV): each output is a sparse dot product; AVX-512 (AVX2) gathers x[col] 16 (8)
// nonzeros at a time into two accumulators, rows split over threads by nonzero count.
// Several rows (SpMM): the input is transposed in panels of up to kTile rows, so each nonzero
// becomes an AXPY over a contiguous panel row, the same register-blocked micro-kernel as the
// direct sparse convolution; blocks of 16 output rows are written out together.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "compressor/checks.h"
#include "compressor/kept_outputs.h"
#include "compressor/sparse_cpu.h"
#include "sparse_checks.h"

namespace {

using compressor::sparse_cpu::kTile;
constexpr const char* kOp = "sparse_linear";

void check_input(const at::Tensor& input) {
  CMP_CHECK_DIM(input, 2, kOp, "input");
  CMP_CHECK_DTYPE(input, at::kFloat, kOp, "input");
  CMP_CHECK_CONTIGUOUS(input, kOp, "input");
}

[[noreturn]] void bad_col_idx(int32_t lo, int32_t hi, int64_t k_in) {
  CMP_CHECK(false, kOp, "col_idx must lie in [0, ", k_in, ") = input features, got [", lo, ", ",
            hi, "]; the weight does not match the input");
  std::abort();  // unreachable: CMP_CHECK(false) throws
}

// Rows of x (rows, k) holding NaN or inf. F.linear spreads such a value to every output of its
// row (the pruned zeros multiply it too), so the kernels set those rows to NaN afterwards.
// Exponent-bit test, branch free, so it vectorises: a pass over x costs ~1% of the product.
std::vector<uint8_t> nonfinite_rows(const float* x, int64_t rows, int64_t k, bool& any) {
  std::vector<uint8_t> bad(rows);
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      uint32_t hit = 0;
      for (int64_t i = 0; i < k; ++i) {
        uint32_t u;
        std::memcpy(&u, x + m * k + i, 4);
        hit |= static_cast<uint32_t>((u & 0x7f800000u) == 0x7f800000u);
      }
      bad[m] = static_cast<uint8_t>(hit);
    }
  });
  any = std::find(bad.begin(), bad.end(), uint8_t{1}) != bad.end();
  return bad;
}

float sparse_dot(const float* vals, const int32_t* col, int64_t nnz, const float* x) {
  int64_t k = 0;
  float sum = 0.f;
#if defined(__AVX512F__)
  // Two independent gather chains: one gather's latency would otherwise bound the loop.
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  for (; k + 32 <= nnz; k += 32) {
    const __m512i i0 = _mm512_loadu_si512(col + k), i1 = _mm512_loadu_si512(col + k + 16);
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(vals + k), _mm512_i32gather_ps(i0, x, 4), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(vals + k + 16), _mm512_i32gather_ps(i1, x, 4), a1);
  }
  if (k + 16 <= nnz) {
    const __m512i i0 = _mm512_loadu_si512(col + k);
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(vals + k), _mm512_i32gather_ps(i0, x, 4), a0);
    k += 16;
  }
  if (k < nnz) {  // one masked gather for the rest: short rows would otherwise be all scalar
    const __mmask16 m = static_cast<__mmask16>((1u << (nnz - k)) - 1u);
    const __m512i i0 = _mm512_maskz_loadu_epi32(m, col + k);
    const __m512 g = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, i0, x, 4);
    a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, vals + k), g, a1);
    k = nnz;
  }
  sum = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
#elif defined(__AVX2__) && defined(__FMA__)
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  for (; k + 16 <= nnz; k += 16) {
    const __m256i i0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col + k));
    const __m256i i1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col + k + 8));
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(vals + k), _mm256_i32gather_ps(x, i0, 4), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(vals + k + 8), _mm256_i32gather_ps(x, i1, 4), a1);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(a0, a1));
  for (float l : lanes) sum += l;
#endif
  for (; k < nnz; ++k) sum += vals[k] * x[col[k]];
  return sum;
}

// First row of each of `parts` pieces holding about equal numbers of nonzeros (rows cost about
// their nnz), so a weight with uneven rows still splits evenly over the threads.
std::vector<int64_t> balanced_rows(const int32_t* rp, int64_t rows, int64_t parts) {
  std::vector<int64_t> start(parts + 1, rows);
  start[0] = 0;
  for (int64_t p = 1; p < parts; ++p)
    start[p] = std::lower_bound(rp, rp + rows, rp[rows] * p / parts) - rp;
  return start;
}

// Each row's column indices are range-checked just before that row is read (they are then in L1),
// instead of in a separate pass over all of col_idx: that pass cost ~30% of the call. A bad index
// stops its piece before any gather; the error is raised after the parallel region.
void spmv(const at::Tensor& input, const float* vals, const int32_t* col, const int32_t* rp,
          const float* bias, at::Tensor& out) {
  const float* x = input.data_ptr<float>();
  float* y = out.data_ptr<float>();
  const int64_t rows = out.size(1), k_in = input.size(1);
  const int64_t parts = std::min<int64_t>(rows, 4 * at::get_num_threads());
  const std::vector<int64_t> start = balanced_rows(rp, rows, parts);
  std::atomic<bool> bad{false};
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t o = start[begin]; o < start[end] && !bad.load(std::memory_order_relaxed); ++o) {
      const int64_t nnz = rp[o + 1] - rp[o];
      const auto [lo, hi] = compressor::sparse_cpu::index_range(col + rp[o], nnz, 0, -1);
      if (lo < 0 || hi >= k_in) {
        bad = true;
        break;
      }
      y[o] = (bias ? bias[o] : 0.f) + sparse_dot(vals + rp[o], col + rp[o], nnz, x);
    }
  });
  if (bad) {
    const int32_t* end = col + rp[rows];
    bad_col_idx(*std::min_element(col, end), *std::max_element(col, end), k_in);
  }
}

// One panel of up to `width` input rows, transposed to (K, width) so each nonzero's slice
// (col * width) is contiguous. As in spmv, each row's indices are checked just before use.
// Output rows are computed kRowBlock at a time into a small buffer and written out transposed,
// kRowBlock consecutive floats per input row: storing each output row straight into y would be
// one scattered store per input row and output row (a cache line each once y outgrows L2).
constexpr int64_t kRowBlock = 16;

void spmm_panel(const float* panel, int64_t width, int64_t m0, int64_t mc, int64_t k_in,
                const float* vals, const int32_t* col, const int32_t* rp, const float* bias,
                at::Tensor& out, std::atomic<bool>& bad) {
  float* y = out.data_ptr<float>();
  const int64_t rows = out.size(1), blocks = (rows + kRowBlock - 1) / kRowBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    alignas(64) float acc[kRowBlock][kTile];
    for (int64_t blk = begin; blk < end && !bad.load(std::memory_order_relaxed); ++blk) {
      const int64_t o0 = blk * kRowBlock, count = std::min(kRowBlock, rows - o0);
      for (int64_t j = 0; j < count; ++j) {
        const int64_t o = o0 + j, nnz = rp[o + 1] - rp[o];
        const auto [lo, hi] = compressor::sparse_cpu::index_range(col + rp[o], nnz, 0, -1);
        if (lo < 0 || hi >= k_in) {
          bad = true;
          return;
        }
        compressor::sparse_cpu::axpy_tile(vals + rp[o], col + rp[o], nnz, panel,
                                          bias ? bias[o] : 0.f, mc, acc[j], false, width);
      }
      for (int64_t i = 0; i < mc; ++i)
        for (int64_t j = 0; j < count; ++j) y[(m0 + i) * rows + o0 + j] = acc[j][i];
    }
  });
}

void spmm(const at::Tensor& input, const float* vals, const int32_t* col, const int32_t* rp,
          const float* bias, at::Tensor& out) {
  const int64_t m = input.size(0), k_in = input.size(1), rows = out.size(1);
  // The panel is only as wide as the batch needs: a kTile-wide panel for 8 rows spread each
  // nonzero's 8 floats over its own cache line and the panel past L2 (measured 1.3x slower).
  // It is also narrow enough for the panel (K x width floats, read at random rows) to stay in
  // L2: a 3072 x 192 panel (2.4 MB) came from L3. Budget 256 KiB, measured on the EPYC (1 MiB
  // L2) at 90%, 128 and 512 tokens: 3072 -> 768 went from 3.4x to 3.5x dense, the rest level.
  using compressor::sparse_cpu::kLanes, compressor::sparse_cpu::vector_multiple;
  constexpr int64_t kPanelBytes = int64_t{1} << 18;
  const int64_t fits = std::max<int64_t>(
      2 * kLanes, kPanelBytes / (4 * std::max<int64_t>(k_in, 1)) / kLanes * kLanes);
  const int64_t width = std::min<int64_t>({kTile, fits, vector_multiple(m)});
  auto panel = at::empty({k_in, width}, input.options());  // columns past mc are never read
  std::atomic<bool> bad{false};
  for (int64_t m0 = 0; m0 < m && !bad; m0 += width) {
    const int64_t mc = std::min<int64_t>(width, m - m0);
    panel.narrow(1, 0, mc).copy_(input.narrow(0, m0, mc).t());
    spmm_panel(panel.data_ptr<float>(), width, m0, mc, k_in, vals, col, rp, bias, out, bad);
  }
  if (bad) bad_col_idx(*std::min_element(col, col + rp[rows]),
                       *std::max_element(col, col + rp[rows]), k_in);
}

at::Tensor sparse_linear_cpu(const at::Tensor& input, const at::Tensor& values,
                             const at::Tensor& col_idx, const at::Tensor& row_ptr,
                             const c10::optional<at::Tensor>& bias) {
  check_input(input);
  compressor::sparse_cpu::check_csr_weight(kOp, values, col_idx, "col_idx", row_ptr, bias, "N_out");
  compressor::sparse_cpu::check_row_ptr(kOp, row_ptr, values.numel());
  auto out = compressor::empty_output({input.size(0), row_ptr.numel() - 1}, input.options());
  if (out.numel() == 0) return out;
  const float* b = bias ? bias->data_ptr<float>() : nullptr;
  const int32_t* rp = row_ptr.data_ptr<int32_t>();
  if (input.size(0) == 1)
    spmv(input, values.data_ptr<float>(), col_idx.data_ptr<int32_t>(), rp, b, out);
  else
    spmm(input, values.data_ptr<float>(), col_idx.data_ptr<int32_t>(), rp, b, out);
  bool any = false;
  const std::vector<uint8_t> bad =
      nonfinite_rows(input.data_ptr<float>(), input.size(0), input.size(1), any);
  if (any)
    for (int64_t m = 0; m < out.size(0); ++m)
      if (bad[m]) out[m].fill_(std::numeric_limits<float>::quiet_NaN());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(compressor, CPU, m) {
  m.impl("sparse_linear", &sparse_linear_cpu);
}
