// pow2_linear on CUDA: out (M, N) = input (M, K) @ W^T + bias, W stored as packed power-of-two codes
// (format in the pow2 block of csrc/ops.cpp). Plain struct + launcher so the kernel compiles with
// nvcc alone (no torch headers).
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

#include "compressor/dtype.h"

namespace compressor {

struct Pow2LinearParams {
  const void* input;       // (M, K) row-major, `dtype`
  const uint8_t* codes;    // (N, K_pad / 2), K_pad = round_up(K, 8); 4-byte aligned
  const uint8_t* nonzero;  // (N, K_pad / 8) bitmap when bits == 5, else nullptr; 4-byte aligned
  const float* bias;       // (N) or nullptr
  void* out;               // (M, N) row-major, `dtype`
  int64_t M;
  int64_t N;
  int64_t K;
  int bits;  // 2..5
  int n1;    // largest exponent of the layer, -119..127 (the binding rejects anything else)
  DType dtype;
};

// cudaErrorInvalidValue on inconsistent sizes/bits, cudaErrorMisalignedAddress when codes or
// nonzero is not 4-byte aligned; otherwise the launch status (cudaGetLastError).
cudaError_t launch_pow2_linear(const Pow2LinearParams& p, cudaStream_t stream);

}  // namespace compressor
