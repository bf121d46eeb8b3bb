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

}  // namespace compressor::sparse_cpu
