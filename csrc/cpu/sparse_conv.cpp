// Direct sparse convolution on CPU (Park et al., ICLR 2017, "Faster CNNs with Direct Sparse
// Convolutions and Guided Pruning").
//
// Each output channel's weights are one CSR row whose column entries are offsets into the padded
// input. With stride 1 the output plane, laid out with the padded width Wp ("virtual" positions
// y*Wp + x), is for every nonzero an AXPY of a contiguous slice of the padded input starting at the
// nonzero's offset: no im2col. Stride s is reduced to stride 1 by splitting the padded input into
// s_h*s_w phase planes (row % s_h, col % s_w), so one code path serves every geometry but the
// depthwise one (sparse_depthwise.cpp: one tap a channel leaves nothing to pay for the copy).
//
// Blocking: a task owns (image, run of up to kRunTiles tiles of virtual positions, block of
// output channels). Per tile, input channels are taken in blocks whose slice of the input under
// the tile fits kL2Floats (half that, for L1, on small planes: channel_block_count), and every
// output channel of the task streams its nonzeros over that slice; within a channel, a tile of
// kTile positions (8 AVX2 or 12 AVX-512 vectors) of accumulators stays in registers while the
// nonzeros are applied. Runs and tiles are split evenly, so no short remainder tile costs a whole
// extra pass over the nonzeros.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>

#include "compressor/balanced_for.h"
#include "compressor/checks.h"
#include "compressor/sparse_cpu.h"
#include "compressor/sparse_tiles.h"

namespace {

using compressor::sparse_cpu::ConvGeom;
using compressor::sparse_cpu::kChannelBlock;
using compressor::sparse_cpu::kRunTiles;
using compressor::sparse_cpu::kTile;
using compressor::sparse_cpu::kTileBuffer;

// One task: output channels [oc0, oc1) of image n, virtual positions [p0, p1), stored into the
// output planes with the epilogue.
void conv_task(const compressor::sparse_cpu::ConvArgs& a, int64_t n, int64_t oc0, int64_t oc1,
               int64_t p0, int64_t p1, float* buf) {
  const ConvGeom& g = a.geom;
  compressor::sparse_cpu::channel_tiles(
      a, a.input + n * g.Cin * g.chan, oc0, oc1, p0, p1, buf,
      [&](int64_t oc, const float* acc, int64_t p, int64_t count) {
        const int64_t plane = (n * g.Cout + oc) * g.Ho * g.Wo;
        compressor::sparse_cpu::store_rows(acc, p, count, g.Wq, g.Wo, a.output + plane,
                                           a.residual ? a.residual + plane : nullptr, a.act);
      });
}

void run_conv(const compressor::sparse_cpu::ConvArgs& a) {
  const ConvGeom& g = a.geom;
  const int64_t run = compressor::sparse_cpu::even_split(g.span, kRunTiles * kTile);
  const int64_t runs = (g.span + run - 1) / run;
  const int64_t blocks = (g.Cout + kChannelBlock - 1) / kChannelBlock;
  auto task = [&](int64_t t) {
    // Tiles sit kTileStride apart: the micro-kernel writes [0, count) of each, and a class
    // pass shifted by its residue may write up to kLanes - 1 floats before it (front slack).
    thread_local std::unique_ptr<float[]> buf(new float[kTileBuffer]);
    const int64_t b = t % blocks, r = (t / blocks) % runs, n = t / (blocks * runs);
    conv_task(a, n, b * kChannelBlock, std::min(g.Cout, (b + 1) * kChannelBlock), r * run,
              std::min(g.span, (r + 1) * run), buf.get());
  };
  compressor::balanced_for(g.N * runs * blocks, task);
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
  g.Hq = (g.Hp + g.sh - 1) / g.sh;
  return with_row_width(g, (g.Wp + g.sw - 1) / g.sw);
}

ConvGeom with_row_width(ConvGeom g, int64_t wq) {
  g.Wq = wq;
  g.plane = g.Hq * g.Wq;
  g.chan = g.sh * g.sw * g.plane;
  g.span = (g.Ho - 1) * g.Wq + g.Wo;
  return g;
}

ConvGeom flat_geom(int64_t n, int64_t cin, int64_t positions, int64_t cout, int64_t groups) {
  return with_row_width(
      make_geom({n, cin, 1, positions}, cout, {1, 1}, {1, 1}, {0, 0}, {1, 1}, groups),
      vector_multiple(positions));
}

void conv_forward(const ConvArgs& args) { run_conv(args); }

}  // namespace compressor::sparse_cpu
