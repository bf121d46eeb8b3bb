// The one place every op schema of the compressor library is defined.
// CPU kernels register in csrc/cpu/, CUDA kernels in csrc/cuda/*_binding.cpp, Python fakes and
// autograd in compressor/ops/. Keep each family in its own block below.
#include <torch/library.h>

TORCH_LIBRARY(compressor, m) {
  // ---- cumax: cumsum(softmax(x)) over the last dim of a contiguous tensor ----
  m.def("cumax(Tensor x) -> Tensor");
  m.def("cumax_backward(Tensor grad, Tensor x) -> Tensor");

  // ---- sparse conv2d / linear (direct sparse convolution) ----

  // ---- power-of-two quantized matmul (INQ codes) ----
  // Contract (shared by CPU and CUDA; see compressor/quantization/packing.py):
  //   levels {0} U {+-2^n : n2 <= n <= n1}, n2 = n1 + 1 - 2^(bits-1)/2.
  //   K = in_features, K_pad = round_up(K, 8). codes: uint8 (N, K_pad/2); column j in byte j/2,
  //   low nibble for even j, high for odd j. Nibble bit 3 = sign (1 = negative), bits 0-2 = m.
  //   bits <= 4: m = 0 -> zero, m in 1..7 -> |w| = 2^(n1 - m + 1); nonzero is empty (numel 0).
  //   bits == 5: m in 0..7 -> |w| = 2^(n1 - m); nonzero uint8 (N, K_pad/8), bit j%8 of byte j/8
  //   set when weight j is nonzero (zero weights: nibble 0, bit 0). Padding columns are zero.
  //   input (M, K) float, output (M, N) = input @ W^T + bias. Inference only.
  //   n1 must be in -119..127 (every decoded exponent is a normal float32 one); see
  //   /work/wt/pow2-contract-changes.md.
  m.def("pow2_linear(Tensor input, Tensor codes, Tensor nonzero, Tensor? bias, int in_features, int bits, int n1) -> Tensor");

  // ---- ON-LSTM fused cell ----

}
