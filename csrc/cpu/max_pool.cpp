// compressor::max_pool2d on CPU: max pooling of a contiguous NCHW float32 tensor, no indices,
// dilation 1, floor mode, padding at most half the window (as torch requires). PyTorch's NCHW
// kernel took 8.7 ms for VGG-16's first 2x2/2 pool at 2 threads, its channels-last one 5.6 ms plus
// conversions; one pass over the input, a row of outputs at a time, is memory-bound.
// A NaN in a window gives NaN, as in torch; padding never wins (it is -inf).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "compressor/balanced_for.h"
#include "compressor/checks.h"

namespace {

constexpr const char* kOp = "max_pool2d";

// NaN-propagating max, branch-free so the loops below vectorise.
inline float nan_max(float m, float v) { return (v > m || v != v) ? v : m; }

// acc[o] = max(acc[o], row[o * step + shift]) for o in [o0, o1). A constant step 1 or 2 (every
// pool of the shipped models) vectorises; a runtime step stays scalar.
template <int kStep>
inline void max_into(float* acc, const float* row, int64_t o0, int64_t o1, int64_t shift,
                     int64_t step) {
  const int64_t s = kStep > 0 ? kStep : step;
  for (int64_t o = o0; o < o1; ++o) acc[o] = nan_max(acc[o], row[o * s + shift]);
}

struct Pool {
  int64_t H, W, Ho, Wo, kh, kw, sh, sw, ph, pw;
};

// Output row oy of one plane: every window row in range, every window column; the columns whose
// window is wholly inside the row run without bounds checks.
template <int kStep>
void pool_row(const float* in, float* out, const Pool& p, int64_t oy) {
  for (int64_t ox = 0; ox < p.Wo; ++ox) out[ox] = -std::numeric_limits<float>::infinity();
  // interior columns: ox * sw - pw >= 0 and ox * sw - pw + kw <= W
  const int64_t lo = std::min(p.Wo, (p.pw + p.sw - 1) / p.sw);
  const int64_t hi = std::max(lo, std::min(p.Wo, (p.W - p.kw + p.pw) / p.sw + 1));
  const int64_t y0 = oy * p.sh - p.ph;
  for (int64_t y = std::max<int64_t>(0, y0); y < std::min(p.H, y0 + p.kh); ++y) {
    const float* row = in + y * p.W;
    for (int64_t kx = 0; kx < p.kw; ++kx) max_into<kStep>(out, row, lo, hi, kx - p.pw, p.sw);
    const auto edge = [&](int64_t ox) {
      const int64_t x0 = ox * p.sw - p.pw;
      for (int64_t x = std::max<int64_t>(0, x0); x < std::min(p.W, x0 + p.kw); ++x)
        out[ox] = nan_max(out[ox], row[x]);
    };
    for (int64_t ox = 0; ox < lo; ++ox) edge(ox);
    for (int64_t ox = hi; ox < p.Wo; ++ox) edge(ox);
  }
}

void check_pair(at::IntArrayRef v, const char* name, int64_t min) {
  CMP_CHECK(v.size() == 2, kOp, name, " must have 2 entries, got ", v.size());
  CMP_CHECK(v[0] >= min && v[1] >= min, kOp, name, " entries must be >= ", min, ", got ", v);
}

at::Tensor max_pool2d_cpu(const at::Tensor& input, at::IntArrayRef kernel_size,
                          at::IntArrayRef stride, at::IntArrayRef padding) {
  CMP_CHECK_DIM(input, 4, kOp, "input");
  CMP_CHECK_DTYPE(input, at::kFloat, kOp, "input");
  CMP_CHECK_CONTIGUOUS(input, kOp, "input");
  check_pair(kernel_size, "kernel_size", 1);
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  CMP_CHECK(padding[0] <= kernel_size[0] / 2 && padding[1] <= kernel_size[1] / 2, kOp,
            "padding ", padding, " must be at most half of kernel_size ", kernel_size);
  Pool p{input.size(2), input.size(3), 0, 0, kernel_size[0], kernel_size[1], stride[0],
         stride[1], padding[0], padding[1]};
  p.Ho = (p.H + 2 * p.ph - p.kh) / p.sh + 1;
  p.Wo = (p.W + 2 * p.pw - p.kw) / p.sw + 1;
  CMP_CHECK(p.H + 2 * p.ph >= p.kh && p.W + 2 * p.pw >= p.kw, kOp, "padded input ",
            p.H + 2 * p.ph, "x", p.W + 2 * p.pw, " is smaller than kernel_size ", kernel_size);
  auto output = at::empty({input.size(0), input.size(1), p.Ho, p.Wo}, input.options());
  const int64_t rows = input.size(0) * input.size(1) * p.Ho;
  if (rows == 0 || p.Wo == 0) return output;
  const float* x = input.data_ptr<float>();
  float* y = output.data_ptr<float>();
  // Tasks of whole output rows, enough of them that a row is not one thread's alone.
  const int64_t grain = std::max<int64_t>(1, 4096 / (p.Wo * p.kh * p.kw));
  compressor::balanced_for((rows + grain - 1) / grain, [&](int64_t task) {
    for (int64_t r = task * grain; r < std::min(rows, (task + 1) * grain); ++r) {
      const float* plane = x + r / p.Ho * p.H * p.W;
      float* out = y + r * p.Wo;
      if (p.sw == 1)
        pool_row<1>(plane, out, p, r % p.Ho);
      else if (p.sw == 2)
        pool_row<2>(plane, out, p, r % p.Ho);
      else
        pool_row<0>(plane, out, p, r % p.Ho);
    }
  });
  return output;
}

}  // namespace

TORCH_LIBRARY_IMPL(compressor, CPU, m) {
  m.impl("max_pool2d", &max_pool2d_cpu);
}
