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

  // ---- ON-LSTM fused cell ----

}
