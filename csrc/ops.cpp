// The one place every op schema of the compressor library is defined.
// CPU kernels register in csrc/cpu/, CUDA kernels in csrc/cuda/*_binding.cpp, Python fakes and
// autograd in compressor/ops/. Keep each family in its own block below.
#include <torch/library.h>

TORCH_LIBRARY(compressor, m) {
  // ---- cumax: cumsum(softmax(x)) over the last dim of a contiguous tensor ----
  m.def("cumax(Tensor x) -> Tensor");
  m.def("cumax_backward(Tensor grad, Tensor x) -> Tensor");

  // ---- sparse conv2d / linear (direct sparse convolution) ----
  // Weight (Cout, Cin/groups, kh, kw) in CSR by output channel: row_ptr int32 (Cout+1) from 0 to
  // nnz, non-decreasing; values float32 (nnz); col_idx int32 (nnz), the flattened column
  // c*kh*kw + r*kw + s, in [0, Cin/groups*kh*kw) and strictly increasing within a row. The op
  // turns columns into input offsets itself. Output act(conv + bias + residual), residual
  // (N, Cout, Ho, Wo) optional, activation one of none, relu, relu6, silu. Inference only.
  m.def("sparse_conv2d(Tensor input, Tensor values, Tensor col_idx, Tensor row_ptr, Tensor? bias, "
        "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, int groups, "
        "Tensor? residual=None, str activation=\"none\") -> Tensor");
  // A residual bottleneck in one op: act2(conv2(act1(conv1(act0(conv0(input) + bias0)) + bias1))
  // + bias2 + residual), conv0 and conv2 1x1 stride 1, conv1 kernel_size x kernel_size (odd)
  // padded kernel_size / 2 with `stride`, all groups 1; each weight in CSR as for sparse_conv2d
  // (conv0 Cin -> Cm, conv1 Cm -> Cm2, conv2 Cm2 -> Cout); residual (N, Cout, Ho, Wo) optional,
  // Ho = (H - 1) / stride + 1 (Wo alike).
  // Equals the three sparse_conv2d calls (fp32 rounding aside; an input holding inf or NaN, or an
  // intermediate holding one where the next conv reads, gives exactly theirs). H, W >= 1.
  // CPU only; inference only.
  m.def("sparse_bottleneck(Tensor input, Tensor values0, Tensor col_idx0, Tensor row_ptr0, "
        "Tensor? bias0, Tensor values1, Tensor col_idx1, Tensor row_ptr1, Tensor? bias1, "
        "Tensor values2, Tensor col_idx2, Tensor row_ptr2, Tensor? bias2, int kernel_size, "
        "int stride, Tensor? residual, str activation0, str activation1, str activation2) "
        "-> Tensor");
  // input (M, K), weight (N_out, K) in CSR -> (M, N_out).
  m.def("sparse_linear(Tensor input, Tensor values, Tensor col_idx, Tensor row_ptr, Tensor? bias) -> Tensor");

  // ---- max pooling (what the sparse models' pools run on) ----
  // input (N, C, H, W) float32 contiguous, no indices, dilation 1, floor mode, padding at most
  // half of kernel_size; -inf padding, a NaN in a window gives NaN. CPU only.
  m.def("max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding) -> Tensor");

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
  // The same codes (bits <= 4) with each input row quantized to int8 at run time, as torch's
  // dynamic int8 Linear does: amax = max|x| of the row, q = round_half_even(x * (127 / amax))
  // clamped to +-127 (q = 0 when 127 / amax overflows), W = W_int * 2^(n1 - 6) with W_int in
  // {0, +-1, ..., +-64}; y = float(q @ W_int^T) * ((amax / 127) * 2^(n1 - 6)) + bias, float32; a
  // row holding NaN or inf gives NaN. in_features <= 131072. CPU only.
  m.def("pow2_linear_int8(Tensor input, Tensor codes, Tensor nonzero, Tensor? bias, int in_features, int bits, int n1) -> Tensor");

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
