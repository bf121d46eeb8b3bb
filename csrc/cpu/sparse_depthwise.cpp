// compressor::sparse_conv2d's depthwise path (see sparse_depthwise.h).
#include "sparse_depthwise.h"

#include <algorithm>
#include <atomic>

#include "compressor/balanced_for.h"
#include "sparse_conv_prep.h"

namespace compressor::sparse_cpu {

namespace {

// acc[x] += w * src[x * step] for x in [0, count). Steps 1 and 2 are constants so that they
// vectorise (a runtime step stays scalar).
inline void axpy_stepped(float* acc, const float* src, float w, int64_t count, int64_t step) {
  if (step == 1)
    for (int64_t x = 0; x < count; ++x) acc[x] += w * src[x];
  else if (step == 2)
    for (int64_t x = 0; x < count; ++x) acc[x] += w * src[2 * x];
  else
    for (int64_t x = 0; x < count; ++x) acc[x] += w * src[x * step];
}

// Output positions i with 0 <= i * step + shift < size: [first_inside, end_inside), capped at
// the output's `length`.
inline int64_t first_inside(int64_t shift, int64_t step) {
  return shift >= 0 ? 0 : (-shift + step - 1) / step;
}
inline int64_t end_inside(int64_t shift, int64_t step, int64_t size, int64_t length) {
  return size - 1 - shift < 0 ? 0 : std::min(length, (size - 1 - shift) / step + 1);
}

}  // namespace

bool depthwise_forward(const ConvGeom& g, const float* x, const float* values,
                       const int32_t* col_idx, const int32_t* row_ptr, const float* bias,
                       const float* residual, Act act, float* out) {
  const int64_t in_plane = g.H * g.W, out_plane = g.Ho * g.Wo;
  std::atomic<bool> finite{true};
  compressor::balanced_for(g.N * g.Cout, [&](int64_t t) {
    if (!finite.load(std::memory_order_relaxed)) return;
    const int64_t n = t / g.Cout, oc = t % g.Cout;
    const float* in = x + (n * g.Cin + oc / g.cout_g) * in_plane;
    // The plane is checked whole (the rows a stride skips too: the dense fallback is right
    // either way), and is then in cache for the taps.
    if (!finite_run(in, in_plane)) {
      finite = false;
      return;
    }
    // The plane is filled with the bias, each tap adds its rows, then one epilogue: on 7x7 and
    // 14x14 planes a fill and an epilogue per row were most of the call.
    float* plane = out + t * out_plane;
    std::fill(plane, plane + out_plane, bias ? bias[oc] : 0.f);
    for (int32_t k = row_ptr[oc]; k < row_ptr[oc + 1]; ++k) {
      // Output (r, c) reads input (r * sh + dy, c * sw + dx); the rows and columns inside it.
      const int64_t dy = col_idx[k] / g.kw * g.dh - g.ph, dx = col_idx[k] % g.kw * g.dw - g.pw;
      const int64_t r0 = first_inside(dy, g.sh), r1 = end_inside(dy, g.sh, g.H, g.Ho);
      const int64_t c0 = first_inside(dx, g.sw), c1 = end_inside(dx, g.sw, g.W, g.Wo);
      if (r0 >= r1 || c0 >= c1) continue;
      const float w = values[k];
      // where output (r, c0)'s input is (pointers formed only inside the plane)
      auto at = [&](int64_t r) { return in + (r * g.sh + dy) * g.W + c0 * g.sw + dx; };
      if (g.sh == 1 && g.sw == 1 && c0 == 0 && c1 == g.Wo && g.Wo == g.W) {
        // whole rows on both sides (a centre-column tap of a 'same' conv): one run
        axpy_stepped(plane + r0 * g.Wo, at(r0), w, (r1 - r0) * g.Wo, 1);
        continue;
      }
      for (int64_t r = r0; r < r1; ++r)
        axpy_stepped(plane + r * g.Wo + c0, at(r), w, c1 - c0, g.sw);
    }
    epilogue(plane, residual ? residual + t * out_plane : nullptr, plane, out_plane, act);
  });
  return finite;
}

}  // namespace compressor::sparse_cpu
