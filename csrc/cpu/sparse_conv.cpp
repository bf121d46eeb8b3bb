// Direct sparse convolution on CPU (Park et al., ICLR 2017, "Faster CNNs with Direct Sparse
// Convolutions and Guided Pruning").
//
// Each output channel's weights are one CSR row whose column entries are offsets into the padded
// input. With stride 1 the output plane, laid out with the padded width Wp ("virtual" positions
// y*Wp + x), is for every nonzero an AXPY of a contiguous slice of the padded input starting at the
// nonzero's offset: no im2col. Stride s is reduced to stride 1 by splitting the padded input into
// s_h*s_w phase planes (row % s_h, col % s_w), so one code path serves every geometry.
//
// Blocking: a task owns (image, run of up to kRunTiles tiles of virtual positions, block of
// output channels). Per tile, input channels are taken in blocks whose slice of the input under
// the tile fits kL2Floats, and every output channel of the task streams its nonzeros over that
// slice; within a channel, a tile of kTile positions (8 AVX2 or 12 AVX-512 vectors) of
// accumulators stays in registers while the nonzeros are applied. Runs and tiles are split evenly,
// so no short remainder tile costs a whole extra pass over the nonzeros.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>

#include "compressor/checks.h"
#include "compressor/sparse_cpu.h"

namespace {

using compressor::sparse_cpu::ConvGeom;
using compressor::sparse_cpu::kTile;

constexpr int64_t kChannelBlock = 32;
using compressor::sparse_cpu::kRunTiles;

// Scatter kTile-or-fewer virtual positions [p, p + count) from `acc` into an (Ho, Wo) plane,
// skipping the Wq - Wo padding columns that the virtual layout computes and throws away, and
// applying the epilogue (residual add, activation) on the way, while the tile is in L1.
void store_virtual(const float* acc, int64_t p, int64_t count, const ConvGeom& g, float* plane,
                   const float* res, compressor::sparse_cpu::Act act) {
  int64_t y = p / g.Wq, x = p % g.Wq, i = 0;
  while (i < count) {
    const int64_t run = std::min(g.Wq - x, count - i);
    if (x < g.Wo) {
      const int64_t at = y * g.Wo + x;
      compressor::sparse_cpu::epilogue(acc + i, res ? res + at : nullptr, plane + at,
                                       std::min(run, g.Wo - x), act);
    }
    i += run;
    x = 0;
    ++y;
  }
}

// Pieces of at most `most` covering `length`, as equal as whole vectors allow: a short last tile
// costs a whole pass over the row's nonzeros for a few positions.
int64_t even_split(int64_t length, int64_t most) {
  using compressor::sparse_cpu::kLanes;
  const int64_t pieces = (length + most - 1) / most;
  return std::min(most, ((length + pieces - 1) / pieces + kLanes - 1) / kLanes * kLanes);
}

// Rows [oc, oc + kRows) of a uniform weight (same columns, groups == 1) over one tile: their
// values sit the common row length apart, their offsets are row oc's.
void rows_tile(const compressor::sparse_cpu::ConvArgs& a, int64_t n, int64_t oc, int64_t cb,
               int64_t p, int64_t count, float* acc) {
  using namespace compressor::sparse_cpu;
#ifdef COMPRESSOR_SPARSE_SIMD
  const ConvGeom& g = a.geom;
  const int32_t* seg = a.segs + oc * (a.ncb + 1) + cb;
  const int64_t length = a.uniform_length;
  float init[kRows];
  for (int r = 0; r < kRows; ++r) init[r] = a.bias ? a.bias[oc + r] : 0.f;
  axpy_rows(a.values + seg[0], length, a.offsets + seg[0], seg[1] - seg[0],
            a.input + n * g.Cin * g.chan + p, init, count, acc, kTile, cb > 0);
#else
  (void)a, (void)n, (void)oc, (void)cb, (void)p, (void)count, (void)acc;
#endif
}

// One task: output channels [oc0, oc1) of image n, virtual positions [p0, p1). Per tile, the
// input-channel blocks in turn, and all output channels within a block, so the block's slice of
// the input under the tile (at most kL2Floats) stays in cache, L2 at least, while the weights
// stream; the channels' partial sums for the tile (kChannelBlock x kTile floats) are parked in
// `buf` between blocks. A uniform weight takes its rows kRows at a time (rows_tile).
void conv_task(const compressor::sparse_cpu::ConvArgs& a, int64_t n, int64_t oc0, int64_t oc1,
               int64_t p0, int64_t p1, float* buf) {
  using compressor::sparse_cpu::kRows;
  const ConvGeom& g = a.geom;
#ifdef COMPRESSOR_SPARSE_SIMD
  const int64_t rows_end = a.uniform_length ? oc0 + (oc1 - oc0) / kRows * kRows : oc0;
  const int64_t most = a.uniform_length ? compressor::sparse_cpu::kMultiTile : kTile;
#else
  const int64_t rows_end = oc0, most = kTile;
#endif
  const int64_t tile = even_split(p1 - p0, most);
  for (int64_t p = p0; p < p1; p += tile) {
    const int64_t count = std::min(tile, p1 - p);
    for (int64_t cb = 0; cb < a.ncb; ++cb) {
      for (int64_t oc = oc0; oc < oc1; ++oc) {
        float* acc = buf + (oc - oc0) * kTile;
        if (oc < rows_end) {
          if ((oc - oc0) % kRows == 0) rows_tile(a, n, oc, cb, p, count, acc);
        } else {
          const float* in = a.input + (n * g.Cin + oc / g.cout_g * g.cin_g) * g.chan + p;
          const int32_t* seg = a.segs + oc * (a.ncb + 1) + cb;
          compressor::sparse_cpu::axpy_tile(a.values + seg[0], a.offsets + seg[0],
                                            seg[1] - seg[0], in, a.bias ? a.bias[oc] : 0.f,
                                            count, acc, cb > 0);
        }
        if (cb == a.ncb - 1) {
          const int64_t plane = (n * g.Cout + oc) * g.Ho * g.Wo;
          store_virtual(acc, p, count, g, a.output + plane, a.residual ? a.residual + plane : nullptr,
                        a.act);
        }
      }
    }
  }
}

void run_conv(const compressor::sparse_cpu::ConvArgs& a) {
  const ConvGeom& g = a.geom;
  const int64_t run = even_split(g.span, kRunTiles * kTile);
  const int64_t runs = (g.span + run - 1) / run;
  const int64_t blocks = (g.Cout + kChannelBlock - 1) / kChannelBlock;
  at::parallel_for(0, g.N * runs * blocks, 1, [&](int64_t begin, int64_t end) {
    // The micro-kernel writes only [0, count) of a tile, so channels can sit back to back.
    std::unique_ptr<float[]> buf(new float[kChannelBlock * kTile]);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t % blocks, r = (t / blocks) % runs, n = t / (blocks * runs);
      conv_task(a, n, b * kChannelBlock, std::min(g.Cout, (b + 1) * kChannelBlock), r * run,
                std::min(g.span, (r + 1) * run), buf.get());
    }
  });
}

}  // namespace

namespace compressor::sparse_cpu {

ConvGeom make_geom(at::IntArrayRef input, int64_t cout, at::IntArrayRef k, at::IntArrayRef s,
                   at::IntArrayRef p, at::IntArrayRef d, int64_t groups) {
  ConvGeom g{};
  g.N = input[0], g.Cin = input[1], g.H = input[2], g.W = input[3];
  g.Cout = cout, g.groups = groups, g.cin_g = g.Cin / groups, g.cout_g = cout / groups;
  g.kh = k[0], g.kw = k[1], g.sh = s[0], g.sw = s[1], g.ph = p[0], g.pw = p[1];
  g.dh = d[0], g.dw = d[1];
  g.Hp = g.H + 2 * g.ph, g.Wp = g.W + 2 * g.pw;
  g.Ho = (g.Hp - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.Wo = (g.Wp - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  g.Hq = (g.Hp + g.sh - 1) / g.sh, g.Wq = (g.Wp + g.sw - 1) / g.sw;
  g.plane = g.Hq * g.Wq;
  g.chan = g.sh * g.sw * g.plane;
  g.span = (g.Ho - 1) * g.Wq + g.Wo;
  return g;
}

void conv_forward(const ConvArgs& args) { run_conv(args); }

}  // namespace compressor::sparse_cpu
