// The one place every op schema of the compressor library is defined.
// CPU kernels register in csrc/cpu/, CUDA kernels in csrc/cuda/*_binding.cpp, Python fakes and
// autograd in compressor/ops/. Keep each family in its own block below.
#include <torch/library.h>

TORCH_LIBRARY(compressor, m) {
  // ---- cumax: cumsum(softmax(x)) over the last dim of a contiguous tensor ----
  m.def("cumax(Tensor x) -> Tensor");
  m.def("cumax_backward(Tensor grad, Tensor x) -> Tensor");

  // ---- sparse conv2d / linear (direct sparse convolution) ----
  // Weight (Cout, Cin/groups, kh, kw) in CSR by output channel: row_ptr int32 (Cout+1), values
  // float32 (nnz), col_offsets int32 (nnz) = c_local*Hp*Wp + r*dil_h*Wp + s*dil_w with
  // Hp = H + 2*pad_h, Wp = W + 2*pad_w for (H, W) = input_hw. Inference only.
  m.def("sparse_conv2d(Tensor input, Tensor values, Tensor col_offsets, Tensor row_ptr, Tensor? bias, "
        "int[2] input_hw, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
        "int groups) -> Tensor");
  // input (M, K), weight (N_out, K) in CSR -> (M, N_out).
  m.def("sparse_linear(Tensor input, Tensor values, Tensor col_idx, Tensor row_ptr, Tensor? bias) -> Tensor");

  // ---- power-of-two quantized matmul (INQ codes) ----

  // ---- ON-LSTM fused cell ----

}
