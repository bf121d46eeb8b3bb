// ON-LSTM, torch level: argument checks shared by the CPU kernels and the CUDA binding, and the
// layer time loop (one W_hh matmul + one fused cell per step) written once for both devices.
// Gate layout per row (D hidden, m = D / chunk): [master in (m) | master forget (m) | o | c | i | f].
#pragma once
#include <ATen/ATen.h>

#include <functional>

#include "compressor/checks.h"

namespace compressor {
namespace onlstm {

inline int64_t gate_width(int64_t hidden, int64_t chunk) { return 4 * hidden + 2 * (hidden / chunk); }

inline void check_float(const at::Tensor& t, const char* op, const char* name, at::ScalarType dt) {
  CMP_CHECK_FLOATING(t, op, name);
  CMP_CHECK_DTYPE(t, dt, op, name);
  CMP_CHECK_CONTIGUOUS(t, op, name);
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* op,
                              const char* name) {
  CMP_CHECK_DEVICE(t, ref.device(), op, name);
}

// c_prev (B, D) fixes batch and hidden; every gate tensor must be (rows, 4D + 2D/chunk).
inline void check_hidden_and_chunk(int64_t hidden, int64_t chunk, const char* op) {
  CMP_CHECK(chunk > 0, op, "chunk_size must be positive, got ", chunk);
  CMP_CHECK(hidden > 0, op, "hidden size must be positive, got ", hidden);
  CMP_CHECK(hidden % chunk == 0, op, "hidden size ", hidden,
            " must be divisible by chunk_size ", chunk);
}

inline void check_gates(const at::Tensor& g, int64_t rows, int64_t hidden, int64_t chunk,
                        const char* op, const char* name) {
  const int64_t width = gate_width(hidden, chunk);
  CMP_CHECK(g.size(-1) == width, op, name, " must have 4*hidden + 2*hidden/chunk_size = ", width,
            " columns (hidden ", hidden, ", chunk_size ", chunk, "), got shape ", g.sizes());
  CMP_CHECK(g.numel() / width == rows, op, name, " has shape ", g.sizes(), ", expected ", rows,
            " rows of ", width);
}

inline void check_state(const at::Tensor& t, const at::Tensor& ref, const char* op,
                        const char* name) {
  CMP_CHECK(t.sizes() == ref.sizes(), op, name, " must have shape ", ref.sizes(), ", got ",
            t.sizes());
}

// Checks for onlstm_cell; returns hidden size D.
inline int64_t check_cell(const at::Tensor& xg, const at::Tensor& hg, const at::Tensor& c_prev,
                          int64_t chunk) {
  const char* op = "onlstm_cell";
  check_float(c_prev, op, "c_prev", c_prev.scalar_type());
  CMP_CHECK_DIM(c_prev, 2, op, "c_prev");
  check_hidden_and_chunk(c_prev.size(1), chunk, op);
  for (auto [t, name] : {std::pair{&xg, "xg"}, std::pair{&hg, "hg"}}) {
    check_float(*t, op, name, c_prev.scalar_type());
    check_same_device(*t, c_prev, op, name);
    CMP_CHECK_DIM(*t, 2, op, name);
    check_gates(*t, c_prev.size(0), c_prev.size(1), chunk, op, name);
  }
  return c_prev.size(1);
}

inline void check_cell_backward(const at::Tensor& grad_h, const at::Tensor& grad_c,
                                const at::Tensor& grad_dist, const at::Tensor& gates,
                                const at::Tensor& c_prev, const at::Tensor& c, int64_t chunk) {
  const char* op = "onlstm_cell_backward";
  const auto dt = c_prev.scalar_type();
  check_float(c_prev, op, "c_prev", dt);
  CMP_CHECK_DIM(c_prev, 2, op, "c_prev");
  check_hidden_and_chunk(c_prev.size(1), chunk, op);
  for (auto [t, name] : {std::pair{&grad_h, "grad_h"}, std::pair{&grad_c, "grad_c"},
                         std::pair{&c, "c"}}) {
    check_float(*t, op, name, dt);
    check_same_device(*t, c_prev, op, name);
    check_state(*t, c_prev, op, name);
  }
  check_float(grad_dist, op, "grad_dist", dt);
  check_same_device(grad_dist, c_prev, op, "grad_dist");
  CMP_CHECK(grad_dist.dim() == 2 && grad_dist.size(0) == c_prev.size(0) && grad_dist.size(1) == 2,
            op, "grad_dist must have shape (", c_prev.size(0), ", 2), got ", grad_dist.sizes());
  check_float(gates, op, "gates", dt);
  check_same_device(gates, c_prev, op, "gates");
  CMP_CHECK_DIM(gates, 2, op, "gates");
  check_gates(gates, c_prev.size(0), c_prev.size(1), chunk, op, "gates");
}

// gates += h W_hh^T for one step. Built once per sequence, so a device can pre-pack W_hh.
using HiddenProjection = std::function<void(const at::Tensor& gates, const at::Tensor& h)>;

inline HiddenProjection plain_hidden_projection(const at::Tensor& w_hh) {
  return [w_t = w_hh.t()](const at::Tensor& gates, const at::Tensor& h) {
    gates.addmm_(h, w_t);
  };
}

// The per-step kernels the loop drives. `gates` (B, G) holds summed pre-activations on entry of
// `forward`, which overwrites o | c | i | f with their sigmoid/tanh values (masters stay logits);
// `backward` reads that activated form.
struct StepKernels {
  std::function<void(const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& h,
                     const at::Tensor& c, const at::Tensor& dist)>
      forward;
  std::function<void(const at::Tensor& grad_h, const at::Tensor& grad_c,
                     const at::Tensor& grad_dist, const at::Tensor& gates,
                     const at::Tensor& c_prev, const at::Tensor& c, const at::Tensor& grad_gates,
                     const at::Tensor& grad_c_prev)>
      backward;
  // Optional; plain_hidden_projection when empty.
  std::function<HiddenProjection(const at::Tensor& w_hh, int64_t batch, int64_t steps)>
      make_hidden_projection;
};

// Returns hidden size D after checking the sequence op's arguments.
inline int64_t check_sequence(const at::Tensor& xg, const at::Tensor& w_hh, const at::Tensor& b_hh,
                              const at::Tensor& h0, const at::Tensor& c0, int64_t chunk,
                              const char* op) {
  const auto dt = xg.scalar_type();
  check_float(xg, op, "xg", dt);
  CMP_CHECK_DIM(xg, 3, op, "xg");
  CMP_CHECK_DIM(w_hh, 2, op, "w_hh");
  const int64_t hidden = w_hh.size(1);
  check_hidden_and_chunk(hidden, chunk, op);
  const int64_t width = gate_width(hidden, chunk);
  CMP_CHECK(w_hh.size(0) == width, op, "w_hh must have shape (", width, ", ", hidden,
            ") = (4*hidden + 2*hidden/chunk_size, hidden), got ", w_hh.sizes());
  CMP_CHECK(xg.size(2) == width, op, "xg must have ", width,
            " = 4*hidden + 2*hidden/chunk_size features in dim 2, got shape ", xg.sizes());
  CMP_CHECK(b_hh.dim() == 1 && b_hh.size(0) == width, op, "b_hh must have shape (", width,
            "), got ", b_hh.sizes());
  for (auto [t, name] : {std::pair{&w_hh, "w_hh"}, std::pair{&b_hh, "b_hh"},
                         std::pair{&h0, "h0"}, std::pair{&c0, "c0"}}) {
    check_float(*t, op, name, dt);
    check_same_device(*t, xg, op, name);
  }
  for (auto [t, name] : {std::pair{&h0, "h0"}, std::pair{&c0, "c0"}}) {
    CMP_CHECK(t->dim() == 2 && t->size(0) == xg.size(1) && t->size(1) == hidden, op, name,
              " must have shape (batch=", xg.size(1), ", hidden=", hidden, "), got ", t->sizes());
  }
  return hidden;
}

// out/cells (T, B, D): h_t and c_t; dist (T, B, 2); gates (T, B, G) saved for the backward.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sequence_forward(
    const at::Tensor& xg, const at::Tensor& w_hh, const at::Tensor& b_hh, const at::Tensor& h0,
    const at::Tensor& c0, int64_t chunk, const StepKernels& k) {
  const int64_t steps = xg.size(0), batch = xg.size(1), hidden = w_hh.size(1);
  auto gates = xg + b_hh;  // fresh contiguous buffer that each step completes in place
  auto out = at::empty({steps, batch, hidden}, xg.options());
  auto cells = at::empty({steps, batch, hidden}, xg.options());
  auto dist = at::empty({steps, batch, 2}, xg.options());
  const auto add_hidden = k.make_hidden_projection ? k.make_hidden_projection(w_hh, batch, steps)
                                                   : plain_hidden_projection(w_hh);
  at::Tensor h = h0, c = c0;
  for (int64_t t = 0; t < steps; ++t) {
    auto g = gates[t];
    add_hidden(g, h);
    k.forward(g, c, out[t], cells[t], dist[t]);
    h = out[t];
    c = cells[t];
  }
  return {out, cells, dist, gates};
}

// Reverse loop: the per-step cell backward and dh_{t-1} = dgates_t W_hh; the weight gradient is
// one matmul over all steps at the end, not one small outer product per step.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sequence_backward(
    const at::Tensor& grad_out, const at::Tensor& grad_cells, const at::Tensor& grad_dist,
    const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& out,
    const at::Tensor& cells, const at::Tensor& gates, const StepKernels& k) {
  const int64_t steps = gates.size(0), batch = gates.size(1), hidden = w_hh.size(1);
  auto grad_gates = at::empty_like(gates);
  auto dh = at::empty({batch, hidden}, gates.options());
  auto dc = at::zeros({batch, hidden}, gates.options());
  auto dc_prev = at::empty({batch, hidden}, gates.options());
  auto rec = at::zeros({batch, hidden}, gates.options());  // dL/dh_t through step t+1
  for (int64_t t = steps - 1; t >= 0; --t) {
    at::add_out(dh, grad_out[t], rec);
    dc.add_(grad_cells[t]);
    const auto c_prev = t > 0 ? cells[t - 1] : c0;
    auto dg = grad_gates[t];
    k.backward(dh, dc, grad_dist[t], gates[t], c_prev, cells[t], dg, dc_prev);
    at::mm_out(rec, dg, w_hh);
    std::swap(dc, dc_prev);
  }
  if (steps == 0) return {grad_gates, at::zeros_like(w_hh), at::zeros_like(h0), at::zeros_like(c0)};
  auto h_prev = at::cat({h0.unsqueeze(0), out.narrow(0, 0, steps - 1)}, 0);
  // Explicit widths: with batch 0 a -1 would be ambiguous and view() would throw.
  auto grad_w = at::mm(grad_gates.view({steps * batch, gates.size(2)}).t(),
                       h_prev.view({steps * batch, hidden}));
  return {grad_gates, grad_w, rec, dc};
}

inline void check_sequence_backward(const at::Tensor& grad_out, const at::Tensor& grad_cells,
                                    const at::Tensor& grad_dist, const at::Tensor& w_hh,
                                    const at::Tensor& h0, const at::Tensor& c0,
                                    const at::Tensor& out, const at::Tensor& cells,
                                    const at::Tensor& gates, int64_t chunk) {
  const char* op = "onlstm_sequence_backward";
  check_sequence(gates, w_hh, at::empty({gates.size(-1)}, gates.options()), h0, c0, chunk, op);
  for (auto [t, name] : {std::pair{&grad_out, "grad_out"}, std::pair{&grad_cells, "grad_cells"},
                         std::pair{&cells, "cells"}}) {
    check_float(*t, op, name, gates.scalar_type());
    check_same_device(*t, gates, op, name);
    check_state(*t, out, op, name);
  }
  check_float(out, op, "out", gates.scalar_type());
  CMP_CHECK(out.dim() == 3 && out.size(0) == gates.size(0) && out.size(1) == gates.size(1) &&
                out.size(2) == w_hh.size(1),
            op, "out must have shape (T, B, hidden), got ", out.sizes());
  check_float(grad_dist, op, "grad_dist", gates.scalar_type());
  check_same_device(grad_dist, gates, op, "grad_dist");
  CMP_CHECK(grad_dist.dim() == 3 && grad_dist.size(0) == gates.size(0) &&
                grad_dist.size(1) == gates.size(1) && grad_dist.size(2) == 2,
            op, "grad_dist must have shape (T, B, 2), got ", grad_dist.sizes());
}

}  // namespace onlstm
}  // namespace compressor
