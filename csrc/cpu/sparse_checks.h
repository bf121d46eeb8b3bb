// Argument checks shared by the CPU sparse ops: the packed CSR weight (values, an int32 index
// array, row_ptr) and the optional bias. Everything the kernels index through is checked here or
// by the op's own index checks before any read, so a bad weight is an error, not a stray read.
#pragma once
#include <ATen/ATen.h>

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

// Columns idx[lo:hi) strictly increase (sorted, no duplicates) within [0, ncols). Branch-free,
// one compare per entry, so it vectorises.
inline bool row_columns_ok(const int32_t* idx, int32_t lo, int32_t hi, int64_t ncols) {
  if (hi <= lo) return true;
  int bad = (idx[lo] < 0) | (idx[hi - 1] >= ncols);
  for (int32_t k = lo + 1; k < hi; ++k) bad |= idx[k] <= idx[k - 1];
  return !bad;
}

// Throws the error that says what is wrong with row r (which row_columns_ok rejected).
[[noreturn]] inline void bad_columns(const char* op, const int32_t* idx, const char* name,
                                     const int32_t* rp, int64_t r, int64_t ncols,
                                     const char* what) {
  for (int32_t k = rp[r]; k < rp[r + 1]; ++k) {
    CMP_CHECK(idx[k] >= 0 && idx[k] < ncols, op, name, "[", k, "] = ", idx[k], " (row ", r,
              ") must lie in [0, ", ncols, ") = ", what, "; the weight does not match the layer");
    CMP_CHECK(k == rp[r] || idx[k] > idx[k - 1], op, name, " must strictly increase within a row "
              "(sorted, no duplicates): row ", r, " has ", idx[k - 1], " then ", idx[k], " at ",
              name, "[", k, "]");
  }
  TORCH_CHECK(false, op, ": ", name, " row ", r, " is invalid");
}

}  // namespace compressor::sparse_cpu
