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
  // gates = xg + hg, width 4D + 2m (m = D / chunk_size): [master in | master forget | o | c | i | f].
  // dist holds the per-row parsing distances [d_f, d_i]. The backward takes the summed gates.
  m.def("onlstm_cell(Tensor xg, Tensor hg, Tensor c_prev, int chunk_size) -> (Tensor h, Tensor c, Tensor dist)");
  m.def("onlstm_cell_backward(Tensor grad_h, Tensor grad_c, Tensor grad_dist, Tensor gates, Tensor c_prev, Tensor c, int chunk_size) -> (Tensor grad_gates, Tensor grad_c_prev)");
  // A whole layer over time: xg (T, B, G) is the input projection, w_hh (G, D). `gates` (T, B, G)
  // is saved for the backward: master logits, then sigmoid/tanh-activated o | c | i | f.
  m.def("onlstm_sequence(Tensor xg, Tensor w_hh, Tensor b_hh, Tensor h0, Tensor c0, int chunk_size) -> (Tensor out, Tensor cells, Tensor dist, Tensor gates)");
  m.def("onlstm_sequence_backward(Tensor grad_out, Tensor grad_cells, Tensor grad_dist, Tensor w_hh, Tensor h0, Tensor c0, Tensor out, Tensor cells, Tensor gates, int chunk_size) -> (Tensor grad_gates, Tensor grad_w_hh, Tensor grad_h0, Tensor grad_c0)");

}
