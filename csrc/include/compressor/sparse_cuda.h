// Direct sparse conv2d and sparse linear on CUDA (DESIGN §3, Park et al. ICLR 2017).
// Plain structs + launchers so the kernels compile with nvcc alone (no torch headers).
//
// Weights are CSR by output channel / output feature: row_ptr (rows + 1, int32), col (nnz, int32),
// values (nnz, float32). The kernels never read out of bounds whatever the CSR content: row_ptr
// entries are clamped to [0, nnz], and a column entry outside the input contributes nothing.
// Checking that content (and raising) is the wrapper's job, done once when a weight is packed.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

#include "compressor/dtype.h"

namespace compressor {

// conv2d: input (batch, in_channels, in_h, in_w) contiguous, output (batch, out_channels, out_h,
// out_w) = act(conv + bias + residual). col_idx[k] = c_local*kernel_h*kernel_w + r*kernel_w + s,
// c_local indexing the input channels of the output channel's group; rows sorted by column.
// activation: 0 none, 1 relu, 2 relu6, 3 silu.
struct SparseConv2dParams {
  const void* input;           // dtype: Float32, Float16 or BFloat16
  const float* values;         // (nnz)
  const int32_t* col_idx;      // (nnz)
  const int32_t* row_ptr;      // (out_channels + 1)
  const float* bias;           // (out_channels) or nullptr
  const void* residual;        // like output, or nullptr
  void* output;                // same dtype as input
  // One device int the launcher sets when the input holds inf or NaN; the kernel then makes
  // NaN every output a pruned (zero) weight would have turned NaN in the dense conv. nullptr:
  // no such check.
  int* nonfinite;
  int64_t nnz;
  int64_t batch, in_channels, out_channels, groups;
  int in_h, in_w, out_h, out_w;
  int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int activation;
  DType dtype;
};

// linear: input (rows, in_features) contiguous, output (rows, out_features) = input @ W^T + bias,
// W (out_features, in_features) in CSR with column indices col_idx.
struct SparseLinearParams {
  const void* input;       // dtype: Float32, Float16 or BFloat16
  const float* values;     // (nnz)
  const int32_t* col_idx;  // (nnz)
  const int32_t* row_ptr;  // (out_features + 1)
  const float* bias;       // (out_features) or nullptr
  void* output;            // same dtype as input
  int64_t nnz;
  int64_t rows, in_features, out_features;
  DType dtype;
};

cudaError_t launch_sparse_conv2d(const SparseConv2dParams& p, cudaStream_t stream);
cudaError_t launch_sparse_linear(const SparseLinearParams& p, cudaStream_t stream);

}  // namespace compressor
