// ON-LSTM fused cell on CUDA: plain parameter structs + launchers, so the kernels compile with nvcc
// alone (no torch headers). All tensors are contiguous, float32 or float64, on one device.
// Row layout of the gates (D hidden, m = D / chunk, G = 4D + 2m):
//   [master in (m) | master forget (m) | o (D) | c (D) | i (D) | f (D)].
#pragma once
#include <cstddef>
#include <cstdint>
#include <cuda_runtime.h>

#include "compressor/dtype.h"

namespace compressor {

struct OnlstmCellParams {
  const void* xg;      // (B, G) input projection, or the summed gates when hg is null
  const void* hg;      // (B, G) hidden projection, or nullptr
  const void* c_prev;  // (B, D)
  void* h;             // (B, D) out
  void* c;             // (B, D) out
  void* dist;          // (B, 2) out: [d_f, d_i]
  void* act;           // (B, G) or nullptr: receives sigmoid/tanh of o | c | i | f (may alias xg)
  int64_t batch;
  int64_t hidden;
  int64_t chunk;
  DType dtype;
};

struct OnlstmCellBackwardParams {
  const void* grad_h;     // (B, D)
  const void* grad_c;     // (B, D)
  const void* grad_dist;  // (B, 2)
  const void* gates;      // (B, G): pre-activations, or activated o | c | i | f when `activated`
  const void* c_prev;     // (B, D)
  const void* c;          // (B, D) the forward's c
  void* grad_gates;       // (B, G) out
  void* grad_c_prev;      // (B, D) out
  int64_t batch;
  int64_t hidden;
  int64_t chunk;
  bool activated;
  DType dtype;
};

// Shared memory per block (one block per batch row): the forward keeps 2 and the backward 6
// vectors of m = hidden / chunk values of `elem` bytes. The launcher sizes its launch with this
// and the binding checks it against the device's limit, so both use the same formula.
inline size_t onlstm_shared_bytes(int64_t hidden, int64_t chunk, size_t elem, bool backward) {
  return elem * (backward ? 6u : 2u) * static_cast<size_t>(hidden / chunk);
}

cudaError_t launch_onlstm_cell_forward(const OnlstmCellParams& p, cudaStream_t stream);
cudaError_t launch_onlstm_cell_backward(const OnlstmCellBackwardParams& p, cudaStream_t stream);

}  // namespace compressor
