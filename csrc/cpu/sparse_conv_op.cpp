// compressor::sparse_conv2d on CPU: argument checks, the padded (and, for stride > 1, phase-split)
// copy of the input, offsets re-expressed in that copy, then the kernel in sparse_conv.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <vector>

#include "compressor/checks.h"
#include "compressor/sparse_cpu.h"
#include "sparse_checks.h"

namespace {

using compressor::sparse_cpu::ConvGeom;
constexpr const char* kOp = "sparse_conv2d";

void check_pair(at::IntArrayRef v, const char* name, int64_t min) {
  CMP_CHECK(v.size() == 2, kOp, name, " must have 2 entries, got ", v.size());
  CMP_CHECK(v[0] >= min && v[1] >= min, kOp, name, " entries must be >= ", min, ", got ", v);
}

void check_input(const at::Tensor& input) {
  CMP_CHECK_DIM(input, 4, kOp, "input");
  CMP_CHECK_DTYPE(input, at::kFloat, kOp, "input");
  CMP_CHECK_CONTIGUOUS(input, kOp, "input");
}

void check_geometry(const ConvGeom& g, at::IntArrayRef input_hw) {
  CMP_CHECK(g.H == input_hw[0] && g.W == input_hw[1], kOp, "input is ", g.H, "x", g.W,
            " but col_offsets were packed for input_hw ", input_hw, "; re-pack the weight");
  CMP_CHECK(g.Cin % g.groups == 0 && g.Cout % g.groups == 0, kOp, "groups=", g.groups,
            " must divide input channels ", g.Cin, " and output channels ", g.Cout);
  CMP_CHECK(g.Ho >= 1 && g.Wo >= 1, kOp, "padded input ", g.Hp, "x", g.Wp,
            " is smaller than the dilated kernel");
  CMP_CHECK(g.cin_g * g.chan + compressor::sparse_cpu::kTile <= std::numeric_limits<int32_t>::max(),
            kOp, "input channel group too large for int32 offsets");
}

// Stride 1: offsets index the padded input directly; the largest valid one reads exactly up to
// the end of the group's last channel, so a range check is all memory safety needs.
void check_offsets_stride1(const at::Tensor& offsets, const ConvGeom& g) {
  const int64_t max_off = (g.cin_g - 1) * g.Hp * g.Wp + (g.kh - 1) * g.dh * g.Wp + (g.kw - 1) * g.dw;
  const int32_t* off = offsets.data_ptr<int32_t>();
  const auto [lo, hi] = compressor::sparse_cpu::index_range(off, offsets.numel(), 0, 0);
  CMP_CHECK(lo >= 0 && hi <= max_off, kOp, "col_offsets must lie in [0, ", max_off,
            "] for this geometry, got [", lo, ", ", hi, "]; the weight does not match the input");
}

// Stride > 1: decode (channel, row, col) of each offset and re-express it in the phase-split copy.
at::Tensor phase_offsets(const at::Tensor& offsets, const ConvGeom& g) {
  auto out = at::empty_like(offsets);
  const int32_t* src = offsets.data_ptr<int32_t>();
  int32_t* dst = out.data_ptr<int32_t>();
  const int64_t padded = g.Hp * g.Wp;
  for (int64_t k = 0; k < offsets.numel(); ++k) {
    const int64_t off = src[k], c = off / padded, r = off % padded / g.Wp, s = off % g.Wp;
    CMP_CHECK(off >= 0 && c < g.cin_g && r <= (g.kh - 1) * g.dh && s <= (g.kw - 1) * g.dw, kOp,
              "col_offsets[", k, "] = ", off, " is out of range for this geometry; the weight ",
              "does not match the input");
    dst[k] = c * g.chan + ((r % g.sh) * g.sw + s % g.sw) * g.plane + r / g.sh * g.Wq + s / g.sw;
  }
  return out;
}

// Input channels per block: the block's slice under one tile of positions fits kL2Floats.
int64_t channel_block_count(const ConvGeom& g) {
  using namespace compressor::sparse_cpu;
  const int64_t reach = ((g.kh - 1) * g.dh / g.sh + 1) * g.Wq;
  const int64_t per_channel = std::min(g.chan, g.sh * g.sw * (kTile + reach));
  const int64_t block = std::max<int64_t>(1, kL2Floats / per_channel);
  return (g.cin_g + block - 1) / block;
}

// True when every row's offsets ascend (csr_from_dense packs them so). Branch-free so it vectorises.
bool rows_sorted(const int32_t* off, const int32_t* rp, int64_t rows) {
  std::atomic<bool> sorted{true};
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    int descents = 0;
    for (int64_t oc = begin; oc < end; ++oc)
      for (int32_t k = rp[oc] + 1; k < rp[oc + 1]; ++k) descents |= off[k] < off[k - 1];
    if (descents) sorted = false;
  });
  return sorted;
}

// (Cout, ncb + 1) starts of each row's input-channel blocks, found by binary search in the sorted
// rows; an unsorted row makes the whole weight one block. (A serial scan over all nonzeros took
// 10-30% of a call at 90% sparsity.)
at::Tensor channel_segments(const at::Tensor& offsets, const at::Tensor& row_ptr, int64_t ncb,
                            int64_t block_stride) {
  const int64_t rows = row_ptr.numel() - 1;
  const int32_t *rp = row_ptr.data_ptr<int32_t>(), *off = offsets.data_ptr<int32_t>();
  if (ncb > 1 && !rows_sorted(off, rp, rows)) ncb = 1;
  auto segs = at::empty({rows, ncb + 1}, row_ptr.options());
  int32_t* out = segs.data_ptr<int32_t>();
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t oc = begin; oc < end; ++oc) {
      int32_t* s = out + oc * (ncb + 1);
      s[0] = rp[oc];
      for (int64_t cb = 1; cb < ncb; ++cb)
        s[cb] = static_cast<int32_t>(
            std::lower_bound(off + s[cb - 1], off + rp[oc + 1], cb * block_stride) - off);
      s[ncb] = rp[oc + 1];
    }
  });
  return segs;
}

// Scratch for the padded copy, kept per calling thread up to kKeepFloats: a fresh multi-MB
// allocation comes back from the OS as untouched pages, and their faults cost more than the whole
// convolution at high sparsity (measured 0.6 ms of VGG-16 conv4_2's 0.7 ms at 100% sparsity).
constexpr size_t kKeepFloats = size_t{8} << 20;

struct Scratch {
  at::Tensor owner;  // set when the buffer is too big to keep
  float* data;
};

Scratch scratch(size_t floats, const at::Tensor& like) {
  if (floats > kKeepFloats) {
    auto t = at::empty({static_cast<int64_t>(floats)}, like.options());
    return {t, t.data_ptr<float>()};
  }
  thread_local std::vector<float> keep;
  if (keep.size() < floats) keep.resize(floats);
  return {at::Tensor(), keep.data()};
}

// (N, Cin, H, W) -> zero-padded (N, Cin, sh, sw, Hq, Wq): padded pixel (y, x) lands in phase plane
// (y % sh, x % sw) at (y / sh, x / sw). Each channel is cleared right before it is filled, while
// its lines are in cache.
Scratch phased_input(const at::Tensor& input, const ConvGeom& g) {
  const int64_t planes = g.N * g.Cin, slack = compressor::sparse_cpu::kTile;
  Scratch buf = scratch(planes * g.chan + slack, input);
  const float* src = input.data_ptr<float>();
  float* dst = buf.data;
  std::memset(dst + planes * g.chan, 0, slack * sizeof(float));
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc) {
      std::memset(dst + nc * g.chan, 0, g.chan * sizeof(float));
      for (int64_t y = 0; y < g.H; ++y) {
        const int64_t yp = y + g.ph;
        const float* row = src + (nc * g.H + y) * g.W;
        float* base = dst + nc * g.chan + (yp % g.sh) * g.sw * g.plane + yp / g.sh * g.Wq;
        if (g.sw == 1) {
          std::memcpy(base + g.pw, row, g.W * sizeof(float));
          continue;
        }
        for (int64_t x = 0; x < g.W; ++x) {
          const int64_t xp = x + g.pw;
          base[(xp % g.sw) * g.plane + xp / g.sw] = row[x];
        }
      }
    }
  });
  return buf;
}

at::Tensor sparse_conv2d_cpu(const at::Tensor& input, const at::Tensor& values,
                             const at::Tensor& col_offsets, const at::Tensor& row_ptr,
                             const c10::optional<at::Tensor>& bias, at::IntArrayRef input_hw,
                             at::IntArrayRef kernel_size, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  check_input(input);
  compressor::sparse_cpu::check_csr_weight(kOp, values, col_offsets, "col_offsets", row_ptr, bias,
                                           "Cout");
  check_pair(input_hw, "input_hw", 0);
  check_pair(kernel_size, "kernel_size", 1);
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  CMP_CHECK(groups >= 1, kOp, "groups must be >= 1, got ", groups);
  const ConvGeom g = compressor::sparse_cpu::make_geom(input, row_ptr.numel() - 1, kernel_size,
                                                       stride, padding, dilation, groups);
  check_geometry(g, input_hw);
  compressor::sparse_cpu::check_row_ptr(kOp, row_ptr, values.numel());
  const bool strided = g.sh > 1 || g.sw > 1;
  at::Tensor offsets = strided ? phase_offsets(col_offsets, g) : col_offsets;
  if (!strided) check_offsets_stride1(col_offsets, g);
  auto output = at::empty({g.N, g.Cout, g.Ho, g.Wo}, input.options());
  if (output.numel() == 0) return output;
  const bool direct = !strided && g.ph == 0 && g.pw == 0;
  const Scratch buf = direct ? Scratch{input, input.data_ptr<float>()} : phased_input(input, g);
  const int64_t ncb = channel_block_count(g);
  const int64_t per_block = (g.cin_g + ncb - 1) / ncb;
  const at::Tensor segs = channel_segments(offsets, row_ptr, ncb, per_block * g.chan);
  compressor::sparse_cpu::conv_forward({g, buf.data, values.data_ptr<float>(),
                                        offsets.data_ptr<int32_t>(), row_ptr.data_ptr<int32_t>(),
                                        segs.data_ptr<int32_t>(), segs.size(1) - 1,
                                        bias ? bias->data_ptr<float>() : nullptr,
                                        output.data_ptr<float>()});
  return output;
}

}  // namespace

TORCH_LIBRARY_IMPL(compressor, CPU, m) {
  m.impl("sparse_conv2d", &sparse_conv2d_cpu);
}
