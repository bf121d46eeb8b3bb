// cumax on rows of a contiguous (rows, len) tensor: y = cumsum(softmax(x)) along len.
// Plain struct + launchers so the CUDA kernels compile with nvcc alone (no torch headers).
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

#include "compressor/dtype.h"

namespace compressor {

struct CumaxParams {
  const void* x;     // (rows, len) input logits
  const void* grad;  // (rows, len) dL/dy; backward only
  void* out;         // (rows, len) y (forward) or dL/dx (backward)
  int64_t rows;
  int64_t len;
  DType dtype;
};

cudaError_t launch_cumax_forward(const CumaxParams& p, cudaStream_t stream);
cudaError_t launch_cumax_backward(const CumaxParams& p, cudaStream_t stream);

}  // namespace compressor
