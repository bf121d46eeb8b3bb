// compressor::sparse_bottleneck on CPU: a residual bottleneck's three sparse convs (1x1, then
// k x k padded k / 2 with a stride, then 1x1 with the residual add) in one op, so that the
// block's inner activations stay in the thread's cache instead of being written to memory by
// one op and read back by the next (in a whole pruned ResNet-50 its convs ran up to 2.3x slower
// than alone with their inputs hot, the residual ones most).
//
// A task owns a slab of output rows of one image and walks it in bands. The first conv's output
// rows for a band (and the rows a slab shares with the next, recomputed) go to a per-thread
// scratch laid out as the middle conv's zero-padded input, split into stride phases as
// sparse_conv2d splits its input, so no padding copy is made; the middle conv's output for the
// band goes to a second scratch, which the last conv reads while it is in L1/L2 and stores, with
// the residual and the activation, into the output. Each conv runs the same tiles as
// sparse_conv2d (sparse_tiles.h) on weights prepared for these scratch layouts.
//
// The unfused ops send an input holding inf or NaN to the dense convolution (pruned zeros turn
// them into NaN there). Here the input and both intermediate results (all the next conv reads)
// are checked as they are made; if any is not finite the call runs the three sparse_conv2d ops
// one after another instead, so the result is theirs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <vector>

#include "compressor/balanced_for.h"
#include "compressor/checks.h"
#include "compressor/kept_outputs.h"
#include "compressor/sparse_cpu.h"
#include "compressor/sparse_tiles.h"
#include "sparse_checks.h"
#include "sparse_conv_prep.h"
#include "thread_scratch.h"

namespace {

using namespace compressor::sparse_cpu;
using compressor::ThreadScratch;
constexpr const char* kOp = "sparse_bottleneck";
const char* const kConvName[3] = {"sparse_bottleneck conv0", "sparse_bottleneck conv1",
                                  "sparse_bottleneck conv2"};

// Per-thread scratch bounds: the first conv's padded output for a slab is at most kSlabFloats
// (rows per slab shrink to fit; memory stays bounded whatever the image), and the middle conv's
// output for a band about kBandFloats, so the last conv reads it from L1/L2.
constexpr int64_t kSlabFloats = int64_t{1} << 20;
constexpr int64_t kBandFloats = int64_t{32} << 10;

struct Weight {
  const at::Tensor& values;
  const at::Tensor& col_idx;
  const at::Tensor& row_ptr;
  const c10::optional<at::Tensor>& bias;
};

int64_t checked_rows(int stage, const Weight& w) {
  check_csr_weight(kConvName[stage], w.values, w.col_idx, "col_idx", w.row_ptr, w.bias, "Cout");
  check_row_ptr(kConvName[stage], w.row_ptr, w.values.numel());
  return w.row_ptr.numel() - 1;
}

void check_offsets_fit(int stage, const ConvGeom& g) {
  CMP_CHECK(g.cin_g * g.chan + kTile <= std::numeric_limits<int32_t>::max(), kConvName[stage],
            "what it reads (", g.cin_g, " channels of ", g.chan,
            " floats: the input, or a scratch of the slab's rows) is too large for int32 "
            "offsets");
}

// The arguments of one stage's tiles; `input` and `output` are set per task.
ConvArgs stage_args(const ConvGeom& g, const Weight& w, const Prepared& prep, Act act,
                    bool whole_vectors = false) {
  ConvArgs a{};
  a.whole_vectors = whole_vectors;
  a.geom = g;
  a.values = w.values.data_ptr<float>();
  a.bias = w.bias ? w.bias->data_ptr<float>() : nullptr;
  a.act = act;
  use_prepared(a, prep);
  return a;
}

// Output channels of a stage over virtual positions [p0, p1) of `in`, kChannelBlock at a time.
template <class Store>
void stage_tiles(const ConvArgs& a, const float* in, int64_t p0, int64_t p1, float* buf,
                 Store&& store) {
  for (int64_t oc0 = 0; oc0 < a.geom.Cout; oc0 += kChannelBlock)
    channel_tiles(a, in, oc0, std::min(a.geom.Cout, oc0 + kChannelBlock), p0, p1, buf, store);
}

// A thread's slab and band buffers are kept up to 16 MB each (thread_scratch.h).
constexpr int64_t kKeepFloats = int64_t{4} << 20;

}  // namespace

namespace compressor::sparse_cpu {

at::Tensor sparse_bottleneck_cpu(
    const at::Tensor& input, const at::Tensor& values0, const at::Tensor& col_idx0,
    const at::Tensor& row_ptr0, const c10::optional<at::Tensor>& bias0, const at::Tensor& values1,
    const at::Tensor& col_idx1, const at::Tensor& row_ptr1, const c10::optional<at::Tensor>& bias1,
    const at::Tensor& values2, const at::Tensor& col_idx2, const at::Tensor& row_ptr2,
    const c10::optional<at::Tensor>& bias2, int64_t kernel_size, int64_t stride,
    const c10::optional<at::Tensor>& residual, c10::string_view activation0,
    c10::string_view activation1, c10::string_view activation2) {
  CMP_CHECK_DEVICE(input, at::Device(at::kCPU), kOp, "input");
  CMP_CHECK_DIM(input, 4, kOp, "input");
  CMP_CHECK_DTYPE(input, at::kFloat, kOp, "input");
  CMP_CHECK_CONTIGUOUS(input, kOp, "input");
  CMP_CHECK(kernel_size >= 1 && kernel_size % 2 == 1, kOp,
            "kernel_size must be odd and >= 1 (the middle conv padded kernel_size / 2), got ",
            kernel_size);
  CMP_CHECK(stride >= 1 && stride <= 1 << 20, kOp, "stride must be in [1, 2^20], got ", stride);
  const Act act[3] = {parse_activation(kOp, "activation0", activation0),
                      parse_activation(kOp, "activation1", activation1),
                      parse_activation(kOp, "activation2", activation2)};
  const Weight w[3] = {{values0, col_idx0, row_ptr0, bias0},
                       {values1, col_idx1, row_ptr1, bias1},
                       {values2, col_idx2, row_ptr2, bias2}};
  const int64_t N = input.size(0), Cin = input.size(1), H = input.size(2), W = input.size(3);
  CMP_CHECK(H >= 1 && W >= 1, kOp, "input height and width must be >= 1, got ", H, "x", W);
  const int64_t Cm = checked_rows(0, w[0]), Cm2 = checked_rows(1, w[1]);
  const int64_t Cout = checked_rows(2, w[2]);
  const int64_t k = kernel_size, h = k / 2, s = stride, Wp = W + 2 * h;
  // The middle conv's (and so the block's) output, and the width of one stride phase of its
  // padded input.
  const int64_t Ho = (H + 2 * h - k) / s + 1, Wo = (Wp - k) / s + 1;
  const int64_t phase_width = (Wp + s - 1) / s;
  if (residual) {
    CMP_CHECK_DEVICE(*residual, at::Device(at::kCPU), kOp, "residual");
    CMP_CHECK_DTYPE(*residual, at::kFloat, kOp, "residual");
    CMP_CHECK_CONTIGUOUS(*residual, kOp, "residual");
    CMP_CHECK(residual->sizes() == at::IntArrayRef({N, Cout, Ho, Wo}), kOp,
              "residual must have the output's shape (", N, ", ", Cout, ", ", Ho, ", ", Wo,
              "), got ", residual->sizes());
  }

  if (N == 0) return at::empty({0, Cout, Ho, Wo}, input.options());
  // Slabs of output rows: whole images when the batch has one per thread; otherwise rows split
  // between the threads, each slab recomputing the k - s rows of the first conv that it shares
  // with the next. On planes too short for that (those rows over 12% of the plane) the threads
  // instead share one image at a time, splitting each conv's output channels as sparse_conv2d
  // does, a parallel region per conv. A slab's scratch stays within kSlabFloats; a band is the
  // rows of the middle conv's output kept for the last conv.
  const int64_t threads = at::get_num_threads(), overlap = std::max<int64_t>(0, k - s);
  int64_t slabs = N >= threads ? 1 : (threads + N - 1) / N;
  const int64_t fit = std::max<int64_t>(
      1, (kSlabFloats / std::max<int64_t>(1, Cm * Wp) - k) / s + 1);
  const bool shared = slabs > 1 && Ho <= fit && overlap * slabs * 8 > H;
  if (shared) slabs = 1;
  int64_t rows = std::min((Ho + slabs - 1) / slabs, fit);
  slabs = std::max<int64_t>(1, (Ho + rows - 1) / std::max<int64_t>(1, rows));
  rows = std::max<int64_t>(1, (Ho + slabs - 1) / slabs);
  // (shared: one band, as each parallel region costs every thread a wake-up)
  const int64_t band = shared ? rows
                              : std::clamp<int64_t>(kBandFloats / std::max<int64_t>(1, Cm2 * phase_width),
                                                    1, rows);

  // The three stages' layouts: conv0 reads the input image; conv1 the slab scratch, the padded
  // rows under a slab ((rows - 1) * s + k of them, Wp wide) split into s x s stride phases as
  // sparse_conv2d splits its input, unpadded from its point of view; conv2 the band scratch, in
  // flat_geom's layout (every channel on a vector, as sparse_conv2d's flat 1x1s, with no copy).
  const int64_t slab_rows = (rows - 1) * s + k;
  const ConvGeom g0 = make_geom(input.sizes(), Cm, {1, 1}, {1, 1}, {0, 0}, {1, 1}, 1);
  const ConvGeom g1 =
      widened(make_geom({1, Cm, slab_rows, Wp}, Cm2, {k, k}, {s, s}, {0, 0}, {1, 1}, 1));
  const int64_t Wq = g1.Wq;  // a slab scratch row (a phase's), maybe widened past phase_width
  const ConvGeom g2 = flat_geom(1, Cm2, band * Wo, Cout, 1);
  const ConvGeom* geoms[3] = {&g0, &g1, &g2};
  std::shared_ptr<const Prepared> prep[3];
  for (int i = 0; i < 3; ++i) {
    check_offsets_fit(i, *geoms[i]);
    prep[i] = prepare_weight(kConvName[i], w[i].col_idx, w[i].row_ptr, *geoms[i]);
  }
  auto output = compressor::empty_output({N, Cout, Ho, Wo}, input.options());
  if (output.numel() == 0) return output;
  const ConvArgs a0 = stage_args(g0, w[0], *prep[0], act[0]);
  // conv1 and conv2 read scratch with a tile's slack after it: their tiles run whole vectors.
  const ConvArgs a1 = stage_args(g1, w[1], *prep[1], act[1], true);
  const ConvArgs a2 = stage_args(g2, w[2], *prep[2], act[2], true);
  const float* x = input.data_ptr<float>();
  const float* res = residual ? residual->data_ptr<float>() : nullptr;
  float* out = output.data_ptr<float>();
  std::atomic<bool> finite{true};
  // Input rows below the last one the middle conv reads (a stride longer than the kernel leaves
  // some) are never computed on, but sparse_conv2d checks its whole input: so is it here.
  const int64_t read_end = std::min(H, (Ho - 1) * s - h + k);
  for (int64_t nc = 0; nc < N * Cin && read_end < H && finite; ++nc)
    if (!finite_run(x + (nc * H + read_end) * W, (H - read_end) * W)) finite = false;

  // One stage over virtual positions [p0, p1) of `in`: by this thread, or (shared) by all,
  // split into output-channel blocks and runs of tiles.
  auto run_stage = [&](const ConvArgs& a, const float* in, int64_t p0, int64_t p1, auto&& store) {
    if (!shared) {
      thread_local std::vector<float> tile_keep;
      const ThreadScratch buf(tile_keep, kTileBuffer, kKeepFloats);
      stage_tiles(a, in, p0, p1, buf.data(), store);
      return;
    }
    const int64_t run = even_split(p1 - p0, kRunTiles * kTile), runs = (p1 - p0 + run - 1) / run;
    const int64_t blocks = (a.geom.Cout + kChannelBlock - 1) / kChannelBlock;
    compressor::balanced_for(runs * blocks, [&](int64_t t) {
      thread_local std::vector<float> tile_keep;
      const ThreadScratch buf(tile_keep, kTileBuffer, kKeepFloats);
      const int64_t b = t % blocks, r0 = p0 + t / blocks * run;
      channel_tiles(a, in, b * kChannelBlock, std::min(a.geom.Cout, (b + 1) * kChannelBlock), r0,
                    std::min(p1, r0 + run), buf.data(), store);
    });
  };

  // fn(i) for i < count: by this thread, or (shared) by all (the scratch's clearing and the
  // input's check, which would otherwise leave the other threads waiting).
  auto for_each = [&](int64_t count, auto&& fn) {
    if (!shared) {
      for (int64_t i = 0; i < count; ++i) fn(i);
      return;
    }
    compressor::balanced_for(count, fn);
  };

  // conv0's output (activated) for image row y, columns [col, col + len), into the slab
  // scratch A at padded row y - top, column col + h, split into its stride phases.
  auto scatter0 = [&](float* A_plane, const float* row, int64_t y, int64_t top, int64_t col,
                      int64_t len) {
    const int64_t r = y - top;
    float* line = A_plane + (r % s) * s * g1.plane + r / s * Wq;
    for (int64_t q = 0; q < s; ++q) {  // the columns of phase q: padded column % s == q
      const int64_t first = ((q - col - h) % s + s) % s;  // offset of the first in [col, +len)
      if (first >= len) continue;
      float* dst = line + q * g1.plane + (col + first + h) / s;
      const float* src = row + first;
      const int64_t count = (len - first + s - 1) / s;
      if (s == 2)  // a constant step vectorises (ResNet's strided blocks)
        for (int64_t j = 0; j < count; ++j) dst[j] = src[2 * j];
      else
        for (int64_t j = 0; j < count; ++j) dst[j] = src[j * s];
    }
  };

  // Output rows [y0, y1) of image n, band by band, with scratch A (the slab's padded, phased
  // conv0 output) and B (a band of conv1's output, Wo wide: conv2 computes no padding columns).
  auto slab = [&](int64_t n, int64_t y0, int64_t y1, float* A, float* B) {
    const int64_t top = y0 * s - h;  // the image row in padded scratch row 0
    const int64_t used = (y1 - y0 - 1) * s + k;  // padded rows under these output rows
    const float* image = x + n * Cin * H * W;
    for_each(Cm, [&](int64_t c) {
      float* plane = A + c * g1.chan;
      if (s > 1) {  // every phase holds padding here and there: clear all, as sparse_conv2d does
        std::memset(plane, 0, g1.chan * sizeof(float));
        return;
      }
      // Rows outside the image are zero padding, and so are the h columns either side of every
      // row and the columns that widen it (one run: a row's right margin and the next row's
      // left one are adjacent).
      for (int64_t r = 0; r < used; ++r) {
        const int64_t y = top + r;
        if (y < 0 || y >= H) {
          std::memset(plane + r * Wq, 0, Wq * sizeof(float));
        } else if (h > 0) {
          std::memset(plane + r * Wq, 0, h * sizeof(float));
          std::memset(plane + r * Wq + h + W, 0, (Wq - h - W) * sizeof(float));
        }
      }
    });
    int64_t done = std::max<int64_t>(0, top);  // the next image row conv0 must compute
    for (int64_t b0 = 0; b0 < y1 - y0 && finite; b0 += band) {
      const int64_t b1 = std::min(y1 - y0, b0 + band);
      const int64_t need = std::min(H, top + (b1 - 1) * s + k);  // image rows conv1 reads
      if (need > done) {
        for_each(Cin, [&](int64_t c) {
          if (!finite_run(image + (c * H + done) * W, (need - done) * W)) finite = false;
        });
        run_stage(a0, image, done * W, need * W,
                  [&](int64_t oc, const float* acc, int64_t p, int64_t count) {
                    float* plane = A + oc * g1.chan;
                    // strided: activated once for the tile, then scattered row by row
                    alignas(64) float tile[kTile];
                    if (s > 1 && !epilogue_checked(acc, tile, count, act[0])) finite = false;
                    int64_t y = p / W, col = p % W, i = 0;
                    while (i < count) {
                      const int64_t run = std::min(W - col, count - i);
                      if (s > 1)
                        scatter0(plane, tile + i, y, top, col, run);
                      else if (!epilogue_checked(acc + i, plane + (y - top) * Wq + h + col, run,
                                                 act[0]))
                        finite = false;
                      i += run;
                      col = 0;
                      ++y;
                    }
                  });
        done = need;
      }
      // conv1 over the band's output rows: virtual positions of the slab scratch
      const int64_t q0 = b0 * Wq, q1 = (b1 - 1) * Wq + Wo;
      run_stage(a1, A, q0, q1, [&](int64_t oc, const float* acc, int64_t q, int64_t count) {
        float* plane = B + oc * g2.chan;
        int64_t y = (q - q0) / Wq, col = (q - q0) % Wq, i = 0;
        while (i < count) {
          const int64_t run = std::min(Wq - col, count - i);
          if (col < Wo && !epilogue_checked(acc + i, plane + y * Wo + col,
                                            std::min(run, Wo - col), act[1]))
            finite = false;
          i += run;
          col = 0;
          ++y;
        }
      });
      // conv2 over the band scratch, into the output rows with the residual
      const int64_t at = (y0 + b0) * Wo;
      run_stage(a2, B, 0, (b1 - b0) * Wo,
                [&](int64_t oc, const float* acc, int64_t q, int64_t count) {
                  const int64_t plane = (n * Cout + oc) * Ho * Wo + at;
                  store_rows(acc, q, count, Wo, Wo, out + plane, res ? res + plane : nullptr,
                             act[2]);
                });
    }
  };

  // Each scratch with a tile of slack after it, zeroed (whole-vector tiles read into it).
  thread_local std::vector<float> slab_keep, band_keep;
  auto scratch = [&](std::vector<float>& keep, int64_t floats) {
    ThreadScratch buf(keep, floats + kTile, kKeepFloats);
    std::memset(buf.data() + floats, 0, kTile * sizeof(float));
    return buf;
  };
  if (shared) {
    const ThreadScratch A = scratch(slab_keep, Cm * g1.chan);
    const ThreadScratch B = scratch(band_keep, Cm2 * g2.chan);
    for (int64_t n = 0; n < N && finite; ++n) slab(n, 0, Ho, A.data(), B.data());
  } else {
    compressor::balanced_for(N * slabs, [&](int64_t t) {
      const int64_t n = t / slabs, y0 = t % slabs * rows;
      if (y0 >= Ho || !finite) return;
      const ThreadScratch A = scratch(slab_keep, Cm * g1.chan);
      const ThreadScratch B = scratch(band_keep, Cm2 * g2.chan);
      slab(n, y0, std::min(Ho, y0 + rows), A.data(), B.data());
    });
  }
  if (finite) return output;
  const auto t0 = sparse_conv2d_cpu(input, values0, col_idx0, row_ptr0, bias0, {1, 1}, {1, 1},
                                    {0, 0}, {1, 1}, 1, c10::nullopt, activation0);
  const auto t1 = sparse_conv2d_cpu(t0, values1, col_idx1, row_ptr1, bias1, {k, k}, {s, s},
                                    {h, h}, {1, 1}, 1, c10::nullopt, activation1);
  return sparse_conv2d_cpu(t1, values2, col_idx2, row_ptr2, bias2, {1, 1}, {1, 1}, {0, 0},
                           {1, 1}, 1, residual, activation2);
}

}  // namespace compressor::sparse_cpu

TORCH_LIBRARY_IMPL(compressor, CPU, m) {
  m.impl("sparse_bottleneck", &compressor::sparse_cpu::sparse_bottleneck_cpu);
}
