// Sparse linear on CUDA: out (rows, out_features) = x (rows, in_features) @ W^T + bias, W in CSR.
//
// One warp per output feature (CSR row) and tile of R input rows: lanes stride over the row's
// nonzeros, so values and column indices are read coalesced once per tile, x is gathered through
// the read-only cache (one vector stays in L1/L2 at batch 1), and R input rows share every weight
// load. A warp reduction finishes each dot product. Column indices outside [0, in_features)
// contribute nothing and row_ptr entries are clamped to [0, nnz], so no CSR content reads out of
// bounds.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>

#include "compressor/cuda_convert.cuh"
#include "compressor/sparse_cuda.h"

namespace compressor {
namespace {

constexpr int kWarp = 32;
constexpr int kWarps = 8;


__device__ __forceinline__ float warp_sum(float v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T, int R>
__device__ __forceinline__ void row_tile(const SparseLinearParams& p, int64_t feature, int64_t r0,
                                         int64_t start, int64_t end) {
  const T* x = static_cast<const T*>(p.input);
  const int lane = threadIdx.x % kWarp;
  const int rows = static_cast<int>(min(p.rows - r0, static_cast<int64_t>(R)));
  float acc[R] = {};
#pragma unroll 2
  for (int64_t k = start + lane; k < end; k += kWarp) {
    const int col = __ldg(p.col_idx + k);
    const float v = __ldg(p.values + k);
    if (col < 0 || col >= p.in_features) continue;
    const T* xc = x + r0 * p.in_features + col;
#pragma unroll
    for (int r = 0; r < R; ++r)
      if (r < rows) acc[r] = fmaf(v, to_float(__ldg(xc + r * p.in_features)), acc[r]);
  }
  const float bias = p.bias ? __ldg(p.bias + feature) : 0.f;
  T* out = static_cast<T*>(p.output);
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const float total = warp_sum(acc[r]);
    if (lane == r && r < rows)
      out[(r0 + r) * p.out_features + feature] = from_float<T>(total + bias);
  }
}

// blockIdx.x: 8 output features (one per warp); blockIdx.y strides over tiles of R input rows.
template <typename T, int R>
__global__ void __launch_bounds__(kWarp * kWarps)
    sparse_linear_kernel(const SparseLinearParams p, int64_t row_tiles) {
  const int64_t feature = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarp;
  if (feature >= p.out_features) return;  // whole warp: no block-level sync below
  const int64_t start =
      min(max(static_cast<int64_t>(__ldg(p.row_ptr + feature)), int64_t{0}), p.nnz);
  const int64_t end =
      min(max(static_cast<int64_t>(__ldg(p.row_ptr + feature + 1)), start), p.nnz);
  for (int64_t tile = blockIdx.y; tile < row_tiles; tile += gridDim.y)
    row_tile<T, R>(p, feature, tile * R, start, end);
}

template <typename T, int R>
cudaError_t launch_tiles(const SparseLinearParams& p, cudaStream_t stream) {
  const int64_t blocks = (p.out_features + kWarps - 1) / kWarps;
  if (blocks > INT_MAX) return cudaErrorInvalidConfiguration;
  const int64_t row_tiles = (p.rows + R - 1) / R;
  const dim3 grid(static_cast<unsigned>(blocks),
                  static_cast<unsigned>(std::min(row_tiles, int64_t{65535})));
  sparse_linear_kernel<T, R><<<grid, kWarp * kWarps, 0, stream>>>(p, row_tiles);
  return cudaGetLastError();
}

// R = 8 amortises each weight load over 8 rows; fewer rows get a tile that wastes no registers.
template <typename T>
cudaError_t launch_typed(const SparseLinearParams& p, cudaStream_t stream) {
  if (p.rows == 1) return launch_tiles<T, 1>(p, stream);
  if (p.rows == 2) return launch_tiles<T, 2>(p, stream);
  if (p.rows <= 4) return launch_tiles<T, 4>(p, stream);
  return launch_tiles<T, 8>(p, stream);
}

}  // namespace

cudaError_t launch_sparse_linear(const SparseLinearParams& p, cudaStream_t stream) {
  if (p.rows == 0 || p.out_features == 0) return cudaSuccess;
  switch (p.dtype) {
    case DType::Float32: return launch_typed<float>(p, stream);
    case DType::Float16: return launch_typed<__half>(p, stream);
    case DType::BFloat16: return launch_typed<__nv_bfloat16>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace compressor
