// compressor::sparse_conv2d on CPU: argument and weight checks, the padded (and, for stride > 1,
// phase-split) copy of the input, each nonzero's column turned into its offset in that copy, then
// the kernel in sparse_conv.cpp with the fused epilogue. The offsets are kept per weight and
// geometry between calls (Prepared). Depthwise convs take sparse_depthwise.cpp instead, which
// reads the input in place. An input holding inf or NaN goes to the dense convolution instead,
// so pruned zeros cannot hide them.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <memory>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "compressor/balanced_for.h"
#include "compressor/checks.h"
#include "compressor/kept_outputs.h"
#include "compressor/sparse_cpu.h"
#include "compressor/tensor_cache.h"
#include "sparse_checks.h"
#include "sparse_conv_prep.h"
#include "sparse_depthwise.h"
#include "thread_scratch.h"

namespace {

using compressor::sparse_cpu::Act;
using compressor::sparse_cpu::ConvGeom;
using compressor::sparse_cpu::Prepared;
constexpr const char* kOp = "sparse_conv2d";

// Geometry entries past this are nonsense and would overflow the index arithmetic (a stride of
// 2^32 squared), so they are refused rather than computed with.
constexpr int64_t kMaxGeometry = int64_t{1} << 20;

void check_pair(at::IntArrayRef v, const char* name, int64_t min) {
  CMP_CHECK(v.size() == 2, kOp, name, " must have 2 entries, got ", v.size());
  CMP_CHECK(v[0] >= min && v[1] >= min && v[0] <= kMaxGeometry && v[1] <= kMaxGeometry, kOp,
            name, " entries must be in [", min, ", ", kMaxGeometry, "], got ", v);
}

void check_input(const at::Tensor& input) {
  CMP_CHECK_DIM(input, 4, kOp, "input");
  CMP_CHECK_DTYPE(input, at::kFloat, kOp, "input");
  CMP_CHECK_CONTIGUOUS(input, kOp, "input");
}

void check_geometry(const ConvGeom& g) {
  CMP_CHECK(g.Cin % g.groups == 0 && g.Cout % g.groups == 0, kOp, "groups=", g.groups,
            " must divide input channels ", g.Cin, " and output channels ", g.Cout);
  CMP_CHECK(g.Ho >= 1 && g.Wo >= 1, kOp, "padded input ", g.Hp, "x", g.Wp,
            " is smaller than the dilated kernel");
  CMP_CHECK(g.cin_g * g.chan + compressor::sparse_cpu::kTile <= std::numeric_limits<int32_t>::max(),
            kOp, "input channel group too large for int32 offsets");
}


void check_residual(const c10::optional<at::Tensor>& residual, const ConvGeom& g) {
  if (!residual) return;
  CMP_CHECK_DEVICE(*residual, at::Device(at::kCPU), kOp, "residual");
  CMP_CHECK_DTYPE(*residual, at::kFloat, kOp, "residual");
  CMP_CHECK_CONTIGUOUS(*residual, kOp, "residual");
  CMP_CHECK(residual->sizes() == at::IntArrayRef({g.N, g.Cout, g.Ho, g.Wo}), kOp,
            "residual must have the output's shape (", g.N, ", ", g.Cout, ", ", g.Ho, ", ", g.Wo,
            "), got ", residual->sizes());
}

}  // namespace

namespace compressor::sparse_cpu {

Act parse_activation(const char* op, const char* name, c10::string_view value) {
  if (value == "none") return Act::None;
  if (value == "relu") return Act::ReLU;
  if (value == "relu6") return Act::ReLU6;
  if (value == "silu") return Act::SiLU;
  TORCH_CHECK(false, op, ": ", name, " must be one of none, relu, relu6, silu, got '",
              std::string(value), "'");
}

// True when x[0:n) holds no inf or NaN: x * 0 is 0 for finite x and NaN otherwise.
bool finite_run(const float* x, int64_t n) {
  using namespace compressor::sparse_cpu;
  float nan_if_any = 0.f;
#ifdef COMPRESSOR_SPARSE_SIMD
  // Written out: GCC turned an `omp simd` reduction of this loop into gathers (41% of a call).
  // Four sums, so the adds do not wait on each other (one chain ran at a quarter of the rate).
  Vec acc[4] = {vzero(), vzero(), vzero(), vzero()};
  int64_t i = 0;
  for (; i + 4 * kLanes <= n; i += 4 * kLanes)
    for (int j = 0; j < 4; ++j) acc[j] = vadd(acc[j], vmul(vload(x + i + j * kLanes), vzero()));
  for (; i + kLanes <= n; i += kLanes) acc[0] = vadd(acc[0], vmul(vload(x + i), vzero()));
  if (i < n)
    acc[1] = vadd(acc[1], vmul(vload(x + i, tail_mask(static_cast<int>(n - i))), vzero()));
  alignas(64) float lanes[kLanes];
  vstore(lanes, vadd(vadd(acc[0], acc[1]), vadd(acc[2], acc[3])));
  for (const float v : lanes) nan_if_any += v;
#else
  for (int64_t i = 0; i < n; ++i) nan_if_any += x[i] * 0.f;
#endif
  return nan_if_any == nan_if_any;
}

}  // namespace compressor::sparse_cpu

namespace {

using compressor::sparse_cpu::finite_run;

// Input channels per block: the block's slice under one tile of positions fits the budget.
int64_t channel_block_count(const ConvGeom& g) {
  using namespace compressor::sparse_cpu;
  const int64_t reach = ((g.kh - 1) * g.dh / g.sh + 1) * g.Wq;
  const int64_t per_channel = std::max<int64_t>(1, std::min(g.chan, g.sh * g.sw * (kTile + reach)));
  // A 1x1 conv reads each input row once per nonzero with no overlap between taps; blocks 4x
  // larger (256 KiB, still L2) halve its partial-sum reloads (measured 10% on 1024->256 at 14x14).
  // A k x k conv on a small plane (its whole span at most half a tile: ResNet-50's layer4 7x7
  // planes) is one tile a task, over which every output channel's nonzeros read the block's input
  // in turn: with blocks of 32 KiB (L1 on Sapphire Rapids is 48 KiB) layer4's 3x3 convs ran
  // 1.05-1.42x faster at batch 1 (Intel Xeon, 2 threads, 4 alternated rounds; docs/benchmarks.md).
  const bool one_by_one = g.kh * g.kw == 1, small_plane = g.span * 2 <= kTile;
  const int64_t budget = one_by_one ? 4 * kL2Floats : small_plane ? kL2Floats / 2 : kL2Floats;
  const int64_t block = std::max<int64_t>(1, budget / per_channel);
  return std::max<int64_t>(1, (g.cin_g + block - 1) / block);  // one (empty) block for Cin = 0
}

// The offset of every weight column c*kh*kw + r*kw + s into one channel group of the phased,
// padded input (tap (r, s) of channel c lies in phase plane (r*dh % sh, s*dw % sw)).
std::vector<int32_t> offset_table(const ConvGeom& g) {
  const int64_t kk = g.kh * g.kw;
  std::vector<int32_t> tap(kk), table(g.cin_g * kk);  // divisions per tap only: 40 us otherwise
  for (int64_t t = 0; t < kk; ++t) {
    const int64_t y = t / g.kw * g.dh, x = t % g.kw * g.dw;
    tap[t] = static_cast<int32_t>(((y % g.sh) * g.sw + x % g.sw) * g.plane + y / g.sh * g.Wq +
                                  x / g.sw);
  }
  for (int64_t c = 0; c < g.cin_g; ++c)
    for (int64_t t = 0; t < kk; ++t) table[c * kk + t] = static_cast<int32_t>(c * g.chan) + tap[t];
  return table;
}

struct Rows {
  at::Tensor offsets;      // (nnz) each nonzero's offset into the phased input
  at::Tensor segs;         // (Cout, ncb * classes + 1) where each row's blocks (classes) start
  at::Tensor value_index;  // (nnz) with classes > 1
};

// The residues modulo kLanes that the layer's offsets can take, when splitting its rows by them
// pays: 2 to 4 of them (3x3 stride 1 on rows a whole number of vectors wide has 3), and rows of
// at least kMinClassRun nonzeros a class in each input-channel block on average (every class's
// pass reloads and stores the tile). Empty otherwise: rows stay as they are.
std::vector<int32_t> alignment_shifts(const std::vector<int32_t>& table, int64_t nnz, int64_t rows,
                                      int64_t ncb) {
#ifdef COMPRESSOR_SPARSE_SIMD
  constexpr int64_t kMinClassRun = 8;
  using compressor::sparse_cpu::kLanes, compressor::sparse_cpu::kMaxClasses;
  bool seen[kLanes] = {};
  for (const int32_t off : table) seen[off % kLanes] = true;
  std::vector<int32_t> shifts;
  for (int32_t r = 0; r < kLanes; ++r)
    if (seen[r]) shifts.push_back(r);
  const int64_t classes = static_cast<int64_t>(shifts.size());
  if (classes < 2 || classes > kMaxClasses || nnz < kMinClassRun * classes * ncb * rows) return {};
  return shifts;
#else
  (void)table, (void)nnz, (void)rows, (void)ncb;
  return {};
#endif
}

// Row segment [begin, end) of `off` regrouped by class (stable within each): offsets rounded down
// to their vector, `vidx` the original positions, class starts into seg[0 : shifts.size()).
void split_classes(int32_t* off, int32_t* vidx, int32_t begin, int32_t end,
                   const std::vector<int32_t>& shifts, int32_t* seg, std::vector<int32_t>& tmp) {
  const int32_t lanes = compressor::sparse_cpu::kLanes;
  tmp.assign(off + begin, off + end);
  int32_t at = begin;
  for (size_t c = 0; c < shifts.size(); ++c) {
    seg[c] = at;
    for (int32_t k = begin; k < end; ++k)
      if (tmp[k - begin] % lanes == shifts[c]) {
        off[at] = tmp[k - begin] - shifts[c];
        vidx[at++] = k;
      }
  }
}

// One pass over the rows, in one parallel region: check each row's columns (sorted, in range),
// look up their offsets, and find by binary search where its input-channel blocks start (a sorted
// row has every channel's offsets, in whatever order the phase split leaves them, after the
// previous channel's). `side(i)` for i < side_jobs (the input's copy or check) runs in the same
// parallel region: on a shared machine every region costs a wake-up of each thread, up to a
// scheduler slice each.
Rows prepare_rows(const char* op, const at::Tensor& col_idx, const at::Tensor& row_ptr,
                  const ConvGeom& g, int64_t ncb, const std::vector<int32_t>& table,
                  const std::vector<int32_t>& shifts, int64_t side_jobs,
                  const std::function<void(int64_t)>& side) {
  const int64_t rows = row_ptr.numel() - 1, ncols = g.cin_g * g.kh * g.kw;
  const int64_t block_stride = (g.cin_g + ncb - 1) / ncb * g.chan;
  const int64_t classes = compressor::sparse_cpu::class_count(shifts);
  Rows out{at::empty_like(col_idx), at::empty({rows, ncb * classes + 1}, row_ptr.options()),
           classes > 1 ? at::empty_like(col_idx) : at::Tensor()};
  const int32_t *col = col_idx.data_ptr<int32_t>(), *rp = row_ptr.data_ptr<int32_t>();
  const int32_t* tab = table.data();
  int32_t *off = out.offsets.data_ptr<int32_t>(), *segs = out.segs.data_ptr<int32_t>();
  int32_t* vidx = classes > 1 ? out.value_index.data_ptr<int32_t>() : nullptr;
  const bool unit = g.kh * g.kw == 1 && g.sh * g.sw == 1;
  const int32_t chan32 = static_cast<int32_t>(g.chan);
  std::atomic<int64_t> first_bad{rows};
  constexpr int64_t kRowChunk = 64;
  const int64_t chunks = (rows + kRowChunk - 1) / kRowChunk;
  // Row chunks are spread evenly among the side jobs: the region is split into contiguous
  // ranges, and all rows first would leave one thread both the rows and half the copy.
  const int64_t jobs = chunks + side_jobs;
  compressor::balanced_for(jobs, [&](int64_t job) {
    const int64_t before = job * chunks / jobs, chunk_end = (job + 1) * chunks / jobs;
    if (chunk_end == before) {
      side(job - before);  // `before` row chunks precede this job
      return;
    }
    for (int64_t r = before * kRowChunk; r < std::min(rows, chunk_end * kRowChunk); ++r) {
      if (!compressor::sparse_cpu::row_columns_ok(col, rp[r], rp[r + 1], ncols)) {
        int64_t seen = first_bad.load();
        while (r < seen && !first_bad.compare_exchange_weak(seen, r)) {}
        break;
      }
      if (unit)  // 1x1, stride 1: the table is c * chan, which vectorises; a lookup does not
        for (int32_t k = rp[r]; k < rp[r + 1]; ++k) off[k] = col[k] * chan32;
      else
        for (int32_t k = rp[r]; k < rp[r + 1]; ++k) off[k] = tab[col[k]];
      int32_t* s = segs + r * (ncb * classes + 1);
      int32_t begin = rp[r];
      for (int64_t cb = 0; cb < ncb; ++cb) {
        const int32_t end = cb + 1 == ncb ? rp[r + 1] : static_cast<int32_t>(
            std::lower_bound(off + begin, off + rp[r + 1], (cb + 1) * block_stride) - off);
        if (classes > 1) {
          thread_local std::vector<int32_t> tmp;
          split_classes(off, vidx, begin, end, shifts, s + cb * classes, tmp);
        } else {
          s[cb] = begin;
        }
        begin = end;
      }
      s[ncb * classes] = rp[r + 1];
    }
  });
  if (first_bad.load() < rows)
    compressor::sparse_cpu::bad_columns(op, col, "col_idx", rp, first_bad.load(), ncols,
                                        "Cin/groups*kh*kw");
  return out;
}

// The common row length when every row has row 0's columns (a layer left unpruned, e.g. a
// network's stem), so that the kernel can take rows together and load each input slice once for
// all of them; 0 otherwise. Rows of different groups read different inputs, so only groups == 1
// qualifies.
int64_t uniform_length(const at::Tensor& col_idx, const at::Tensor& row_ptr, const ConvGeom& g) {
  const int32_t *col = col_idx.data_ptr<int32_t>(), *rp = row_ptr.data_ptr<int32_t>();
  const int64_t rows = row_ptr.numel() - 1, length = rp[1] - rp[0];
  if (g.groups != 1 || rows < compressor::sparse_cpu::kRows || length == 0) return 0;
  for (int64_t r = 1; r < rows; ++r)
    if (rp[r + 1] - rp[r] != length ||
        std::memcmp(col + rp[r], col, length * sizeof(int32_t)) != 0)
      return 0;
  return length;
}

// What the kernel reads besides the input and the values, derived from col_idx and row_ptr for
// one geometry. Kept between calls (compressor::TensorCache: the same tensors at the same
// versions): recomputing it took 7% of a whole pruned ResNet-50 at batch 1. The kernel reads
// only these and `values` (whose length is part of the key), so content changed behind torch's
// version counter stays in bounds; it is seen when the tensors are next edited by torch ops.
std::shared_ptr<const Prepared> prepared(const char* op, const at::Tensor& col_idx,
                                         const at::Tensor& row_ptr, const ConvGeom& g,
                                         int64_t side_jobs,
                                         const std::function<void(int64_t)>& side) {
  static compressor::TensorCache<Prepared> cache;
  const int64_t ncb = channel_block_count(g);
  const compressor::TensorCache<Prepared>::Key key{
      g.cin_g, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.Wq, g.plane, g.groups, ncb,
      col_idx.numel(), row_ptr.numel()};
  if (auto hit = cache.find(col_idx, row_ptr, key)) {
    compressor::balanced_for(side_jobs, side);
    return hit;
  }
  // Rows that share their columns run together (rows_tile), on offsets as they are.
  const int64_t uniform = uniform_length(col_idx, row_ptr, g);
  const std::vector<int32_t> table = offset_table(g);
  const std::vector<int32_t> shifts =
      uniform ? std::vector<int32_t>{}
              : alignment_shifts(table, col_idx.numel(), row_ptr.numel() - 1, ncb);
  Rows rows = prepare_rows(op, col_idx, row_ptr, g, ncb, table, shifts, side_jobs, side);
  auto value = std::make_shared<const Prepared>(
      Prepared{std::move(rows.offsets), std::move(rows.segs), uniform, ncb, shifts,
               std::move(rows.value_index)});
  cache.add(col_idx, row_ptr, key, value);
  return value;
}

// The padded copy's scratch (thread_scratch.h) is kept up to 8 MB by each calling thread; a batch
// is padded a group of images at a time so the copy stays within that; only an image bigger than
// it gets a buffer of its own.
constexpr int64_t kKeepFloats = int64_t{2} << 20;

struct ColumnPhase {
  int64_t x0, count, at;  // first input column, how many, where the first lands in a line
};

// out[j] = in[j * step], j < count. A constant step 2 (every strided conv of ResNet) vectorises
// with permutes; a runtime step stayed scalar, 45% of a 3x3 stride-2 call's own time.
inline void strided_copy(float* out, const float* in, int64_t count, int64_t step) {
  if (step == 1)
    std::memcpy(out, in, count * sizeof(float));
  else if (step == 2)
    for (int64_t j = 0; j < count; ++j) out[j] = in[2 * j];
  else
    for (int64_t j = 0; j < count; ++j) out[j] = in[j * step];
}

// Images [n0, n1) of (N, Cin, H, W) -> zero-padded (n1 - n0, Cin, sh, sw, Hq, Wq) in dst: padded
// pixel (y, x) lands in phase plane (y % sh, x % sw) at (y / sh, x / sw). With a `step`, the
// (H, W) that geometry g sees is every step_h-th row and step_w-th column of the input (a strided
// 1x1 conv run as a stride-1 one). With `flat_rows` (a flat 1x1 geometry: flat_one_by_one), g's
// one row per plane is that many picked rows of the input one after another. plane(i) copies the
// i-th (image, channel) plane, and zeroes what the copy leaves, while its lines are in cache, and
// says whether what it copied was finite (no inf or NaN), so a caller can run the planes in
// whatever parallel region it has.
struct PhasedCopy {
  const ConvGeom& g;
  const float* src;
  float* dst;
  int64_t planes, src_h, src_w, step_h, step_w, flat_rows;
  std::vector<ColumnPhase> phases;  // input columns x0, x0 + sw, ... go to phase plane q

  PhasedCopy(const at::Tensor& input, const ConvGeom& geom, int64_t n0, int64_t n1, float* out,
             int64_t step_h = 1, int64_t step_w = 1, int64_t flat_rows = 0)
      : g(geom), src(input.data_ptr<float>() + n0 * input.size(1) * input.size(2) * input.size(3)),
        dst(out), planes((n1 - n0) * geom.Cin), src_h(input.size(2)), src_w(input.size(3)),
        step_h(step_h), step_w(step_w), flat_rows(flat_rows) {
    std::memset(dst + planes * g.chan, 0, compressor::sparse_cpu::kTile * sizeof(float));
    for (int64_t q = 0; q < g.sw; ++q) {
      const int64_t x0 = ((q - g.pw) % g.sw + g.sw) % g.sw;
      phases.push_back({x0, x0 < g.W ? (g.W - x0 + g.sw - 1) / g.sw : 0,
                        q * g.plane + (x0 + g.pw) / g.sw});
    }
  }

  const float* row(int64_t nc, int64_t y) const {
    return src + (nc * src_h + y * step_h) * src_w;
  }

  bool plane(int64_t nc) const {
    float* const out = dst + nc * g.chan;
    if (flat_rows > 0) {
      const int64_t cols = g.W / flat_rows;
      for (int64_t y = 0; y < flat_rows; ++y)
        strided_copy(out + y * cols, row(nc, y), cols, step_w);
      std::memset(out + g.W, 0, (g.chan - g.W) * sizeof(float));
    } else if (g.sh == 1 && g.sw == 1) {
      // Only the padding is cleared: each row's right margin and the next row's left one are
      // one run (a whole-plane memset first was a second pass over it).
      int64_t at = 0;
      for (int64_t y = 0; y < g.H; ++y) {
        const int64_t start = (g.ph + y) * g.Wq + g.pw;
        std::memset(out + at, 0, (start - at) * sizeof(float));
        strided_copy(out + start, row(nc, y), g.W, step_w);
        at = start + g.W;
      }
      std::memset(out + at, 0, (g.chan - at) * sizeof(float));
    } else {
      std::memset(out, 0, g.chan * sizeof(float));
      // Padded pixel (yp, xp) goes to phase (yp % sh, xp % sw) at (yp / sh, xp / sw): stepped,
      // not divided (a 64-bit division per row was a quarter of a call on 7x7 planes).
      int64_t phase = g.ph % g.sh, line = g.ph / g.sh;
      for (int64_t y = 0; y < g.H; ++y) {
        float* base = out + phase * g.sw * g.plane + line * g.Wq;
        // one phase at a time: a strided read and a contiguous write, which vectorise
        for (const ColumnPhase& ph : phases)
          strided_copy(base + ph.at, row(nc, y) + ph.x0 * step_w, ph.count, g.sw * step_w);
        if (++phase == g.sh) {
          phase = 0;
          ++line;
        }
      }
    }
    // Checked on the copy, hot in cache, and on nothing the conv does not read.
    return finite_run(out, g.chan);
  }
};

// All planes of images [n0, n1) in one parallel region; false when the input is not finite.
bool phased_input(const at::Tensor& input, const ConvGeom& g, int64_t n0, int64_t n1, float* dst,
                  int64_t step_h, int64_t step_w, int64_t flat_rows) {
  const PhasedCopy copy(input, g, n0, n1, dst, step_h, step_w, flat_rows);
  std::atomic<bool> finite{true};
  compressor::balanced_for(copy.planes, [&](int64_t nc) {
    if (!copy.plane(nc)) finite = false;
  });
  return finite;
}

// Row r's columns, or the error that says what is wrong with them.
void check_row_columns(const int32_t* col, const int32_t* rp, int64_t r, int64_t ncols) {
  if (!compressor::sparse_cpu::row_columns_ok(col, rp[r], rp[r + 1], ncols))
    compressor::sparse_cpu::bad_columns(kOp, col, "col_idx", rp, r, ncols, "Cin/groups*kh*kw");
}

// What the dense convolution gives, for an input holding inf or NaN: pruned weights are zeros
// that turn them into NaN there, and the sparse kernel, which skips them, cannot.
at::Tensor dense_fallback(const at::Tensor& input, const at::Tensor& values,
                          const at::Tensor& col_idx, const at::Tensor& row_ptr,
                          const c10::optional<at::Tensor>& bias,
                          const c10::optional<at::Tensor>& residual, const ConvGeom& g, Act act) {
  const int64_t ncols = g.cin_g * g.kh * g.kw;
  auto weight = at::zeros({g.Cout, ncols}, values.options());
  float* w = weight.data_ptr<float>();
  const float* v = values.data_ptr<float>();
  const int32_t *col = col_idx.data_ptr<int32_t>(), *rp = row_ptr.data_ptr<int32_t>();
  for (int64_t r = 0; r < g.Cout; ++r) {
    check_row_columns(col, rp, r, ncols);  // again: with the offsets cached, last checked when made
    for (int32_t k = rp[r]; k < rp[r + 1]; ++k) w[r * ncols + col[k]] = v[k];
  }
  auto out = at::conv2d(input, weight.view({g.Cout, g.cin_g, g.kh, g.kw}), bias, {g.sh, g.sw},
                        {g.ph, g.pw}, {g.dh, g.dw}, g.groups);
  if (residual) out.add_(*residual);
  if (act == Act::ReLU) out.relu_();
  if (act == Act::ReLU6) out.clamp_(0, 6);
  if (act == Act::SiLU) at::silu_(out);
  return out;
}

ConvGeom checked_geometry(const at::Tensor& input, const at::Tensor& values,
                          const at::Tensor& col_idx, const at::Tensor& row_ptr,
                          const c10::optional<at::Tensor>& bias, at::IntArrayRef kernel_size,
                          at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, int64_t groups) {
  check_input(input);
  compressor::sparse_cpu::check_csr_weight(kOp, values, col_idx, "col_idx", row_ptr, bias, "Cout");
  check_pair(kernel_size, "kernel_size", 1);
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  CMP_CHECK(groups >= 1, kOp, "groups must be >= 1, got ", groups);
  const ConvGeom g = compressor::sparse_cpu::make_geom(input.sizes(), row_ptr.numel() - 1,
                                                       kernel_size, stride, padding, dilation,
                                                       groups);
  check_geometry(g);
  compressor::sparse_cpu::check_row_ptr(kOp, row_ptr, values.numel());
  return g;
}

// An unpadded 1x1 conv whose output plane is not a whole number of vectors (7x7, 14x14) reads
// every input channel at another alignment (in place, or as its strided copy laid it out), so
// most of its vector loads split a cache line: it ran 1.5-2x slower a multiply-add than on 8x8
// or 16x16 planes (Intel Xeon, 1 thread). Its positions are independent, so it can run in
// flat_geom's layout on a copy: that geometry, when each copied float feeds at least kMinUses
// multiply-adds on average (nnz per input channel) to pay for the copy; none otherwise. At 90%,
// ResNet-50's 256->1024 and 512->2048 (102 and 205 a float) ran 1.06-1.36x faster, its
// 1024->256 and 2048->512 (26 and 51) 0.58-0.88x (Intel Xeon, 2 threads, batch 1 and 16). A
// strided one's copy picks its rows and columns into the flat plane (PhasedCopy's flat_rows).
std::optional<ConvGeom> flat_one_by_one(const ConvGeom& g, int64_t nnz) {
  using namespace compressor::sparse_cpu;
  constexpr int64_t kMinUses = 64;
  const int64_t hw = g.Ho * g.Wo;
  if (g.kh != 1 || g.kw != 1 || g.ph != 0 || g.pw != 0 || hw % kLanes == 0 || g.Cin == 0 ||
      nnz < kMinUses * g.Cin ||
      g.cin_g * vector_multiple(hw) + kTile > std::numeric_limits<int32_t>::max())
    return std::nullopt;
  return flat_geom(g.N, g.Cin, hw, g.Cout, g.groups);
}

// The depthwise path (sparse_depthwise.h): its columns are checked on every call, as it keeps
// nothing between calls (a depthwise weight has about one nonzero per channel at 90%).
at::Tensor depthwise(const at::Tensor& input, const at::Tensor& values, const at::Tensor& col_idx,
                     const at::Tensor& row_ptr, const c10::optional<at::Tensor>& bias,
                     const c10::optional<at::Tensor>& residual, const ConvGeom& g, Act act) {
  const int32_t *col = col_idx.data_ptr<int32_t>(), *rp = row_ptr.data_ptr<int32_t>();
  for (int64_t r = 0; r < g.Cout; ++r) check_row_columns(col, rp, r, g.kh * g.kw);
  auto output = compressor::empty_output({g.N, g.Cout, g.Ho, g.Wo}, input.options());
  if (output.numel() == 0) return output;
  if (!compressor::sparse_cpu::depthwise_forward(
          g, input.data_ptr<float>(), values.data_ptr<float>(), col, rp,
          bias ? bias->data_ptr<float>() : nullptr,
          residual ? residual->data_ptr<float>() : nullptr, act, output.data_ptr<float>()))
    return dense_fallback(input, values, col_idx, row_ptr, bias, residual, g, act);
  return output;
}

}  // namespace

namespace compressor::sparse_cpu {

// g with its phase rows widened to a whole number of vectors when that adds at most 1/8 to
// them: then every channel and row starts on a vector, each tap's offsets share one residue, and
// a 3x3 stride-1 conv's nonzeros fall into 3 alignment classes (Prepared) instead of up to 9.
ConvGeom widened(ConvGeom g) {
  const int64_t wq = vector_multiple(g.Wq);
  if (wq == g.Wq || (wq - g.Wq) * 8 > wq ||
      g.cin_g * g.sh * g.sw * g.Hq * wq + kTile > std::numeric_limits<int32_t>::max())
    return g;
  return with_row_width(g, wq);
}

void use_prepared(ConvArgs& a, const Prepared& prep) {
  a.offsets = prep.offsets.data_ptr<int32_t>();
  a.segs = prep.segs.data_ptr<int32_t>();
  a.ncb = prep.ncb;
  a.uniform_length = prep.uniform_length;
  a.classes = prep.classes();
  std::copy(prep.shifts.begin(), prep.shifts.end(), a.shifts);
  a.value_index = a.classes > 1 ? prep.value_index.data_ptr<int32_t>() : nullptr;
}

std::shared_ptr<const Prepared> prepare_weight(const char* op, const at::Tensor& col_idx,
                                               const at::Tensor& row_ptr, const ConvGeom& g) {
  return prepared(op, col_idx, row_ptr, g, 0, [](int64_t) {});
}

at::Tensor sparse_conv2d_cpu(const at::Tensor& input, const at::Tensor& values,
                             const at::Tensor& col_idx, const at::Tensor& row_ptr,
                             const c10::optional<at::Tensor>& bias, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, int64_t groups,
                             const c10::optional<at::Tensor>& residual,
                             c10::string_view activation) {
  const Act act = parse_activation(kOp, "activation", activation);
  const ConvGeom g = checked_geometry(input, values, col_idx, row_ptr, bias, kernel_size, stride,
                                      padding, dilation, groups);
  check_residual(residual, g);
  if (compressor::sparse_cpu::depthwise_fits(g)) return depthwise(input, values, col_idx,
                                                                   row_ptr, bias, residual, g, act);
  // A strided 1x1 conv without padding reads only every sh-th row and sw-th column (a
  // phase-split copy would copy the whole input to use one phase): it runs as a stride-1 conv
  // over those, which the copy into the scratch buffer picks out.
  const bool subsample = g.kh == 1 && g.kw == 1 && g.ph == 0 && g.pw == 0 && (g.sh > 1 || g.sw > 1);
  const int64_t step_h = subsample ? g.sh : 1, step_w = subsample ? g.sw : 1;
  // Stride 1 without padding reads the input in place; otherwise (and for a 1x1 conv whose plane
  // is not a whole number of vectors: flat_one_by_one) groups of images are copied, into rows
  // widened to whole vectors where that costs little.
  const std::optional<ConvGeom> flat = flat_one_by_one(g, values.numel());
  const bool direct = !subsample && !flat && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
  const ConvGeom unwidened = !subsample ? g : compressor::sparse_cpu::make_geom(
      {g.N, g.Cin, g.Ho, g.Wo}, g.Cout, {1, 1}, {1, 1}, {0, 0}, {1, 1}, g.groups);
  const ConvGeom run = flat ? *flat : direct ? unwidened : widened(unwidened);
  const int64_t slack = compressor::sparse_cpu::kTile, per_image = run.Cin * run.chan;
  const int64_t step = direct ? g.N : std::max<int64_t>(1, (kKeepFloats - slack) / per_image);
  thread_local std::vector<float> keep;
  const ThreadScratch buf(keep, direct ? 0 : std::min(step, g.N) * per_image + slack, kKeepFloats);
  // The first group's copy (or, reading in place, the finiteness check) runs with the rows'
  // preparation, in one parallel region.
  constexpr int64_t kCheckChunk = int64_t{1} << 16;
  const float* x = input.data_ptr<float>();
  std::unique_ptr<PhasedCopy> first;
  // a flat plane: a strided conv's picked rows, or a stride-1 conv's whole plane as one row
  const int64_t flat_rows = !flat ? 0 : subsample ? g.Ho : 1;
  if (!direct)
    first = std::make_unique<PhasedCopy>(input, run, 0, std::min(step, g.N), buf.data(), step_h,
                                         step_w, flat_rows);
  std::atomic<bool> finite{true};
  const int64_t side_jobs = direct ? (input.numel() + kCheckChunk - 1) / kCheckChunk
                                   : first->planes;
  const auto prep = prepared(kOp, col_idx, row_ptr, run, side_jobs, [&](int64_t i) {
    const bool ok = direct ? finite_run(x + i * kCheckChunk,
                                        std::min(kCheckChunk, input.numel() - i * kCheckChunk))
                           : first->plane(i);
    if (!ok) finite = false;
  });
  auto output = compressor::empty_output({g.N, g.Cout, g.Ho, g.Wo}, input.options());
  if (output.numel() == 0) return output;
  if (!finite) return dense_fallback(input, values, col_idx, row_ptr, bias, residual, g, act);
  for (int64_t n0 = 0; n0 < g.N; n0 += step) {
    const int64_t n1 = std::min(g.N, n0 + step);
    if (n0 > 0 && !phased_input(input, run, n0, n1, buf.data(), step_h, step_w, flat_rows))
      return dense_fallback(input, values, col_idx, row_ptr, bias, residual, g, act);
    ConvGeom part = run;
    part.N = n1 - n0;
    const int64_t out_at = n0 * g.Cout * g.Ho * g.Wo;
    compressor::sparse_cpu::ConvArgs args{};
    args.geom = part;
    args.input = direct ? x : buf.data();
    args.values = values.data_ptr<float>();
    args.bias = bias ? bias->data_ptr<float>() : nullptr;
    args.residual = residual ? residual->data_ptr<float>() + out_at : nullptr;
    args.act = act;
    args.output = output.data_ptr<float>() + out_at;
    use_prepared(args, *prep);
    args.whole_vectors = !direct;  // the copy has kTile floats of slack after it
    compressor::sparse_cpu::conv_forward(args);
  }
  return output;
}

}  // namespace compressor::sparse_cpu

TORCH_LIBRARY_IMPL(compressor, CPU, m) {
  m.impl("sparse_conv2d", &compressor::sparse_cpu::sparse_conv2d_cpu);
}
