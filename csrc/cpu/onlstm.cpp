// ON-LSTM fused cell on CPU: everything after the W_hh matmul in one pass per batch row, rows
// split across torch's intra-op threads. The sequence ops run the shared time loop
// (compressor/onlstm_loop.h) over these row kernels.
//
// Before any include, so every function in this file agrees on it (GCC will not inline across a
// mismatch): without trapping math GCC vectorises the clamps and rounding of the polynomial exp
// in onlstm_rows.h. Values are unchanged; this is not fast-math.
#pragma GCC optimize("no-trapping-math")
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "compressor/checks.h"
#include "compressor/onlstm_loop.h"
#include "mkl_packed_linear.h"
#include "onlstm_rows.h"

namespace {

namespace oc = compressor::onlstm_cpu;
namespace ol = compressor::onlstm;

// Rows are cheap (a few D-wide passes); a grain of 4 keeps small batches on one thread.
constexpr int64_t kGrain = 4;

// gates (B, G): summed pre-activations, or (hg given) xg with hg added first. act, when given,
// receives the activated gates (may alias gates).
template <typename T>
void cell_forward(const T* xg, const T* hg, const T* cp, T* h, T* c, T* dist, T* act,
                  int64_t batch, const oc::Dims& d) {
  at::parallel_for(0, batch, kGrain, [&](int64_t begin, int64_t end) {
    oc::Scratch<T> s(d);
    for (int64_t b = begin; b < end; ++b) {
      const T* g = xg + b * d.G;
      if (hg) {
        const T* hr = hg + b * d.G;
#pragma omp simd
        for (int64_t j = 0; j < d.G; ++j) s.gsum[j] = g[j] + hr[j];
        g = s.gsum.data();
      }
      const int64_t r = b * d.D;
      if (act) {
        oc::forward_row<T, true>(g, cp + r, h + r, c + r, dist + 2 * b, act + b * d.G, d, s);
      } else {
        oc::forward_row<T, false>(g, cp + r, h + r, c + r, dist + 2 * b, nullptr, d, s);
      }
    }
  });
}

template <typename T, bool kActivated>
void cell_backward(const T* gh, const T* gc, const T* gdist, const T* gates, const T* cp,
                   const T* cy, T* dgates, T* dcp, int64_t batch, const oc::Dims& d) {
  at::parallel_for(0, batch, kGrain, [&](int64_t begin, int64_t end) {
    oc::Scratch<T> s(d);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t r = b * d.D;
      oc::backward_row<T, kActivated>(gh + r, gc + r, gdist + 2 * b, gates + b * d.G, cp + r,
                                      cy + r, dgates + b * d.G, dcp + r, d, s);
    }
  });
}

// One step on tensors already checked: gates are complete sums, activated in place.
void step_forward(const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& h,
                  const at::Tensor& c, const at::Tensor& dist) {
  const oc::Dims d(c_prev.size(1), c_prev.size(1) / ((gates.size(-1) - 4 * c_prev.size(1)) / 2));
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "onlstm_step_forward", [&] {
    auto* g = gates.data_ptr<scalar_t>();
    cell_forward<scalar_t>(g, nullptr, c_prev.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                           c.data_ptr<scalar_t>(), dist.data_ptr<scalar_t>(), g, c_prev.size(0),
                           d);
  });
}

template <bool kActivated>
void step_backward(const at::Tensor& grad_h, const at::Tensor& grad_c, const at::Tensor& grad_dist,
                   const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& c,
                   const at::Tensor& grad_gates, const at::Tensor& grad_c_prev) {
  const oc::Dims d(c_prev.size(1), c_prev.size(1) / ((gates.size(-1) - 4 * c_prev.size(1)) / 2));
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "onlstm_step_backward", [&] {
    cell_backward<scalar_t, kActivated>(
        grad_h.data_ptr<scalar_t>(), grad_c.data_ptr<scalar_t>(), grad_dist.data_ptr<scalar_t>(),
        gates.data_ptr<scalar_t>(), c_prev.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(),
        grad_gates.data_ptr<scalar_t>(), grad_c_prev.data_ptr<scalar_t>(), c_prev.size(0), d);
  });
}

void check_cpu(const at::Tensor& t, const char* op) {
  CMP_CHECK_DEVICE(t, at::Device(at::kCPU), op, "inputs");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> onlstm_cell_cpu(const at::Tensor& xg,
                                                               const at::Tensor& hg,
                                                               const at::Tensor& c_prev,
                                                               int64_t chunk) {
  const int64_t hidden = ol::check_cell(xg, hg, c_prev, chunk);
  const int64_t batch = c_prev.size(0);
  auto h = at::empty_like(c_prev), c = at::empty_like(c_prev);
  auto dist = at::empty({batch, 2}, c_prev.options());
  if (batch == 0) return {h, c, dist};
  AT_DISPATCH_FLOATING_TYPES(xg.scalar_type(), "onlstm_cell_cpu", [&] {
    cell_forward<scalar_t>(xg.data_ptr<scalar_t>(), hg.data_ptr<scalar_t>(),
                           c_prev.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                           c.data_ptr<scalar_t>(), dist.data_ptr<scalar_t>(), nullptr, batch,
                           oc::Dims(hidden, chunk));
  });
  return {h, c, dist};
}

std::tuple<at::Tensor, at::Tensor> onlstm_cell_backward_cpu(
    const at::Tensor& grad_h, const at::Tensor& grad_c, const at::Tensor& grad_dist,
    const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& c, int64_t chunk) {
  ol::check_cell_backward(grad_h, grad_c, grad_dist, gates, c_prev, c, chunk);
  auto grad_gates = at::empty_like(gates), grad_c_prev = at::empty_like(c_prev);
  if (c_prev.size(0) > 0) {
    step_backward<false>(grad_h, grad_c, grad_dist, gates, c_prev, c, grad_gates, grad_c_prev);
  }
  return {grad_gates, grad_c_prev};
}

// Packing W_hh for MKL's packed GEMM is a fixed cost that only long enough sequences repay.
// Measured at hidden 1150, batch 20 (Xeon, 2 threads): packed, a forward costs ~8.7 ms + 1.12 ms
// per step against ~1.54 ms per step plain, so packing wins from ~21 steps. Shorter sequences
// (token-by-token generation, say) keep addmm. The backward's dg W_hh was tried packed too (with
// a transpose): no measurable gain per step, so it stays a plain mm.
constexpr int64_t kPackForwardSteps = 24;

// gates += h W_hh^T, with W_hh packed once per sequence when that pays.
ol::HiddenProjection hidden_projection(const at::Tensor& w_hh, int64_t batch, int64_t steps) {
  auto packed = steps >= kPackForwardSteps
                    ? compressor::cpu::MklPackedLinear::make(w_hh, batch)
                    : std::nullopt;
  if (!packed) return ol::plain_hidden_projection(w_hh);
  return [packed = std::move(*packed)](const at::Tensor& gates, const at::Tensor& h) {
    gates.add_(packed(h));
  };
}

ol::StepKernels cpu_steps() {
  return {step_forward, step_backward<true>, hidden_projection};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> onlstm_sequence_cpu(
    const at::Tensor& xg, const at::Tensor& w_hh, const at::Tensor& b_hh, const at::Tensor& h0,
    const at::Tensor& c0, int64_t chunk) {
  ol::check_sequence(xg, w_hh, b_hh, h0, c0, chunk, "onlstm_sequence");
  check_cpu(xg, "onlstm_sequence");
  return ol::sequence_forward(xg, w_hh, b_hh, h0, c0, chunk, cpu_steps());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> onlstm_sequence_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& grad_cells, const at::Tensor& grad_dist,
    const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& out,
    const at::Tensor& cells, const at::Tensor& gates, int64_t chunk) {
  ol::check_sequence_backward(grad_out, grad_cells, grad_dist, w_hh, h0, c0, out, cells, gates,
                              chunk);
  check_cpu(gates, "onlstm_sequence_backward");
  return ol::sequence_backward(grad_out, grad_cells, grad_dist, w_hh, h0, c0, out, cells, gates,
                               cpu_steps());
}

}  // namespace

TORCH_LIBRARY_IMPL(compressor, CPU, m) {
  m.impl("onlstm_cell", &onlstm_cell_cpu);
  m.impl("onlstm_cell_backward", &onlstm_cell_backward_cpu);
  m.impl("onlstm_sequence", &onlstm_sequence_cpu);
  m.impl("onlstm_sequence_backward", &onlstm_sequence_backward_cpu);
}
