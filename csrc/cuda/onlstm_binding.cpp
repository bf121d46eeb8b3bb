// Registers the CUDA ON-LSTM cell launchers with torch: checks, device guard, current stream. The
// sequence ops run the shared time loop (compressor/onlstm_loop.h): cuBLAS for W_hh, our cell kernel
// for the rest, all on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "compressor/checks.h"
#include "compressor/cuda_binding.h"
#include "compressor/onlstm.h"
#include "compressor/onlstm_loop.h"

namespace {

namespace ol = compressor::onlstm;
using compressor::OnlstmCellBackwardParams;
using compressor::OnlstmCellParams;

void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  CMP_CHECK(t.is_cuda(), op, name, " must be a CUDA tensor, got ", t.device());
}

// Past the device's opt-in shared-memory limit the launch itself would fail with a bare "invalid
// argument"; say what is too large instead.
void check_shared_memory(const at::Tensor& t, int64_t hidden, int64_t chunk, bool backward,
                         const char* op) {
  int limit = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                        t.get_device()));
  const int64_t masters = hidden / chunk;
  const auto need = static_cast<int64_t>(
      compressor::onlstm_shared_bytes(hidden, chunk, t.element_size(), backward));
  CMP_CHECK(need <= limit, op, "hidden/chunk_size = ", masters, " master units need ", need,
            " bytes of shared memory per block, more than this GPU's ", limit,
            "; use a larger chunk_size (or run on the CPU)");
}

// chunk from the gate width: G = 4D + 2m, chunk = D / m (both already validated).
int64_t chunk_of(const at::Tensor& gates, int64_t hidden) {
  return hidden / ((gates.size(-1) - 4 * hidden) / 2);
}

void cell_forward(const at::Tensor& xg, const at::Tensor* hg, const at::Tensor& c_prev,
                  const at::Tensor& h, const at::Tensor& c, const at::Tensor& dist,
                  const at::Tensor* act, int64_t chunk) {
  OnlstmCellParams p{};
  p.xg = xg.data_ptr();
  p.hg = hg ? hg->data_ptr() : nullptr;
  p.c_prev = c_prev.data_ptr();
  p.h = h.data_ptr();
  p.c = c.data_ptr();
  p.dist = dist.data_ptr();
  p.act = act ? act->data_ptr() : nullptr;
  p.batch = c_prev.size(0);
  p.hidden = c_prev.size(1);
  p.chunk = chunk;
  p.dtype = compressor::to_dtype(c_prev, "onlstm_cell", "c_prev");
  compressor::check_launch(
      compressor::launch_onlstm_cell_forward(p, c10::cuda::getCurrentCUDAStream()),
      "onlstm_cell");
}

void cell_backward(const at::Tensor& grad_h, const at::Tensor& grad_c, const at::Tensor& grad_dist,
                   const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& c,
                   const at::Tensor& grad_gates, const at::Tensor& grad_c_prev, int64_t chunk,
                   bool activated) {
  OnlstmCellBackwardParams p{};
  p.grad_h = grad_h.data_ptr();
  p.grad_c = grad_c.data_ptr();
  p.grad_dist = grad_dist.data_ptr();
  p.gates = gates.data_ptr();
  p.c_prev = c_prev.data_ptr();
  p.c = c.data_ptr();
  p.grad_gates = grad_gates.data_ptr();
  p.grad_c_prev = grad_c_prev.data_ptr();
  p.batch = c_prev.size(0);
  p.hidden = c_prev.size(1);
  p.chunk = chunk;
  p.activated = activated;
  p.dtype = compressor::to_dtype(c_prev, "onlstm_cell_backward", "c_prev");
  compressor::check_launch(
      compressor::launch_onlstm_cell_backward(p, c10::cuda::getCurrentCUDAStream()),
      "onlstm_cell_backward");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> onlstm_cell_cuda(const at::Tensor& xg,
                                                                const at::Tensor& hg,
                                                                const at::Tensor& c_prev,
                                                                int64_t chunk) {
  ol::check_cell(xg, hg, c_prev, chunk);
  check_cuda(c_prev, "onlstm_cell", "c_prev");
  const c10::cuda::CUDAGuard guard(c_prev.device());
  check_shared_memory(c_prev, c_prev.size(1), chunk, false, "onlstm_cell");
  auto h = at::empty_like(c_prev), c = at::empty_like(c_prev);
  auto dist = at::empty({c_prev.size(0), 2}, c_prev.options());
  cell_forward(xg, &hg, c_prev, h, c, dist, nullptr, chunk);
  return {h, c, dist};
}

std::tuple<at::Tensor, at::Tensor> onlstm_cell_backward_cuda(
    const at::Tensor& grad_h, const at::Tensor& grad_c, const at::Tensor& grad_dist,
    const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& c, int64_t chunk) {
  ol::check_cell_backward(grad_h, grad_c, grad_dist, gates, c_prev, c, chunk);
  check_cuda(c_prev, "onlstm_cell_backward", "c_prev");
  const c10::cuda::CUDAGuard guard(c_prev.device());
  check_shared_memory(c_prev, c_prev.size(1), chunk, true, "onlstm_cell_backward");
  auto grad_gates = at::empty_like(gates), grad_c_prev = at::empty_like(c_prev);
  cell_backward(grad_h, grad_c, grad_dist, gates, c_prev, c, grad_gates, grad_c_prev, chunk, false);
  return {grad_gates, grad_c_prev};
}

ol::StepKernels cuda_steps() {
  ol::StepKernels k;
  k.forward = [](const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& h,
                 const at::Tensor& c, const at::Tensor& dist) {
    cell_forward(gates, nullptr, c_prev, h, c, dist, &gates, chunk_of(gates, c_prev.size(1)));
  };
  k.backward = [](const at::Tensor& grad_h, const at::Tensor& grad_c, const at::Tensor& grad_dist,
                  const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& c,
                  const at::Tensor& grad_gates, const at::Tensor& grad_c_prev) {
    cell_backward(grad_h, grad_c, grad_dist, gates, c_prev, c, grad_gates, grad_c_prev,
                  chunk_of(gates, c_prev.size(1)), true);
  };
  return k;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> onlstm_sequence_cuda(
    const at::Tensor& xg, const at::Tensor& w_hh, const at::Tensor& b_hh, const at::Tensor& h0,
    const at::Tensor& c0, int64_t chunk) {
  ol::check_sequence(xg, w_hh, b_hh, h0, c0, chunk, "onlstm_sequence");
  check_cuda(xg, "onlstm_sequence", "xg");
  const c10::cuda::CUDAGuard guard(xg.device());
  check_shared_memory(xg, w_hh.size(1), chunk, false, "onlstm_sequence");
  return ol::sequence_forward(xg, w_hh, b_hh, h0, c0, chunk, cuda_steps());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> onlstm_sequence_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& grad_cells, const at::Tensor& grad_dist,
    const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& out,
    const at::Tensor& cells, const at::Tensor& gates, int64_t chunk) {
  ol::check_sequence_backward(grad_out, grad_cells, grad_dist, w_hh, h0, c0, out, cells, gates,
                              chunk);
  check_cuda(gates, "onlstm_sequence_backward", "gates");
  // the shared checks leave out's device to the final at::cat, which fails less clearly
  CMP_CHECK_DEVICE(out, gates.device(), "onlstm_sequence_backward", "out");
  const c10::cuda::CUDAGuard guard(gates.device());
  check_shared_memory(gates, w_hh.size(1), chunk, true, "onlstm_sequence_backward");
  return ol::sequence_backward(grad_out, grad_cells, grad_dist, w_hh, h0, c0, out, cells, gates,
                               cuda_steps());
}

}  // namespace

TORCH_LIBRARY_IMPL(compressor, CUDA, m) {
  m.impl("onlstm_cell", &onlstm_cell_cuda);
  m.impl("onlstm_cell_backward", &onlstm_cell_backward_cuda);
  m.impl("onlstm_sequence", &onlstm_sequence_cuda);
  m.impl("onlstm_sequence_backward", &onlstm_sequence_backward_cuda);
}
