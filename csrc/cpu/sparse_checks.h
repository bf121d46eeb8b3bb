// Argument checks shared by the CPU sparse ops: the packed CSR weight (values, an int32 index
// array, row_ptr) and the optional bias. Everything the kernels index through is checked here or
// by the op's own index checks before any read, so a bad weight is an error, not a stray read.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>

#include "compressor/checks.h"

namespace compressor::sparse_cpu {

// `index` is the op's per-nonzero int32 array (col_idx or col_offsets); `rows` names the row
// count in messages ("N_out", "Cout").
inline void check_csr_weight(const char* op, const at::Tensor& values, const at::Tensor& index,
                             const char* index_name, const at::Tensor& row_ptr,
                             const c10::optional<at::Tensor>& bias, const char* rows) {
  const at::Device cpu(at::kCPU);
  for (auto [t, name] : {std::pair{&values, "values"}, {&index, index_name},
                         {&row_ptr, "row_ptr"}}) {
    CMP_CHECK_DEVICE(*t, cpu, op, name);
    CMP_CHECK_DIM(*t, 1, op, name);
    CMP_CHECK_CONTIGUOUS(*t, op, name);
  }
  CMP_CHECK_DTYPE(values, at::kFloat, op, "values");
  CMP_CHECK_DTYPE(index, at::kInt, op, index_name);
  CMP_CHECK_DTYPE(row_ptr, at::kInt, op, "row_ptr");
  CMP_CHECK(index.numel() == values.numel(), op, index_name, " has ", index.numel(),
            " entries but values has ", values.numel());
  CMP_CHECK(row_ptr.numel() >= 1, op, "row_ptr must have ", rows, " + 1 >= 1 entries");
  if (bias) {
    CMP_CHECK_DEVICE(*bias, cpu, op, "bias");
    CMP_CHECK_DTYPE(*bias, at::kFloat, op, "bias");
    CMP_CHECK_CONTIGUOUS(*bias, op, "bias");
    CMP_CHECK(bias->dim() == 1 && bias->numel() == row_ptr.numel() - 1, op,
              "bias must have shape (", row_ptr.numel() - 1, ",), got ", bias->sizes());
  }
}

// row_ptr must start at 0, never decrease and end at nnz, or the kernel would read past values.
inline void check_row_ptr(const char* op, const at::Tensor& row_ptr, int64_t nnz) {
  const int32_t* rp = row_ptr.data_ptr<int32_t>();
  const int64_t rows = row_ptr.numel() - 1;
  CMP_CHECK(rp[0] == 0, op, "row_ptr[0] must be 0, got ", rp[0]);
  for (int64_t i = 0; i < rows; ++i)
    CMP_CHECK(rp[i + 1] >= rp[i], op, "row_ptr must be non-decreasing (row ", i, ")");
  CMP_CHECK(rp[rows] == nnz, op, "row_ptr[-1] must equal nnz = ", nnz, ", got ", rp[rows]);
}

// Every row's column entries strictly increase (sorted, no duplicates) and lie in [0, ncols).
// Call after check_row_ptr. One compare per entry in the pass that finds a bad row (branch-free,
// so it vectorises); only a bad row is scanned again, to say what is wrong with it.
inline void check_sorted_columns(const char* op, const at::Tensor& index, const char* name,
                                 const at::Tensor& row_ptr, int64_t ncols, const char* what) {
  const int32_t *idx = index.data_ptr<int32_t>(), *rp = row_ptr.data_ptr<int32_t>();
  const int64_t rows = row_ptr.numel() - 1;
  std::atomic<int64_t> first_bad{rows};
  at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end && r < first_bad.load(std::memory_order_relaxed); ++r) {
      const int32_t lo = rp[r], hi = rp[r + 1];
      if (hi <= lo) continue;
      int bad = (idx[lo] < 0) | (idx[hi - 1] >= ncols);
      for (int32_t k = lo + 1; k < hi; ++k) bad |= idx[k] <= idx[k - 1];
      if (!bad) continue;
      int64_t seen = first_bad.load();
      while (r < seen && !first_bad.compare_exchange_weak(seen, r)) {}
      return;
    }
  });
  const int64_t r = first_bad.load();
  if (r == rows) return;
  for (int32_t k = rp[r]; k < rp[r + 1]; ++k) {
    CMP_CHECK(idx[k] >= 0 && idx[k] < ncols, op, name, "[", k, "] = ", idx[k], " (row ", r,
              ") must lie in [0, ", ncols, ") = ", what, "; the weight does not match the layer");
    CMP_CHECK(k == rp[r] || idx[k] > idx[k - 1], op, name, " must strictly increase within a row "
              "(sorted, no duplicates): row ", r, " has ", idx[k - 1], " then ", idx[k], " at ",
              name, "[", k, "]");
  }
}

}  // namespace compressor::sparse_cpu
