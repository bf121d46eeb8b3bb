// Direct sparse conv2d on CUDA (Park et al. ICLR 2017; tiling in the spirit of Escort/SparseRT).
//
// One block per (image, output tile of TH x TW pixels, tile of 8*OCW output channels of one group).
// Each warp owns OCW output channels; each lane owns P pixels of the tile, so a nonzero's value and
// offset are warp-uniform (broadcast from shared memory) and consecutive lanes read consecutive
// input columns. The tile's receptive field is staged in shared memory chunk by chunk of input
// channels, zero-filled outside the input, so the inner loop is one shared load and one FMA per
// (nonzero, pixel) with no bounds checks and no padded copy of the input. CSR rows are walked with
// a cursor per channel chunk (columns c*kh*kw + r*kw + s ascend with the channel in a sorted row).
// A nonzero that is not in the staged chunk (an unsorted row, patches too big for shared memory)
// takes a bounds-checked global path instead, so any CSR content gives defined results and no
// out-of-bounds read; a column outside [0, Cin/groups*kh*kw) contributes nothing. The store
// applies bias, residual and activation. When the input holds inf or NaN (a flag set by a scan
// before the launch), every output that a pruned zero weight would have made NaN in the dense
// convolution is made NaN too, so pruning cannot hide them.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>

#include "compressor/cuda_convert.cuh"
#include "compressor/sparse_cuda.h"

namespace compressor {
namespace {

constexpr int kWarp = 32;
constexpr int kWarps = 8;
constexpr int kThreads = kWarp * kWarps;
// Dynamic shared memory for the staged patch; with the 2 KiB nonzero buffers the block stays well under
// the 48 KiB that needs no opt-in, so several blocks share an SM.
constexpr int64_t kPatchBytes = 44 * 1024;
constexpr int kSkip = INT_MIN;  // decoded code of a nonzero that contributes nothing


// Host-computed geometry shared by every block of a launch.
struct Tiling {
  int tile_w, tile_h;    // output pixels per tile; tile_w * tile_h == 32 * P
  int patch_w, patch_h;  // input columns/rows (padded coordinates) the tile reads
  int chunk;             // input channels staged per pass; 0: none fit, all go the global path
  int tiles_w;
  int64_t tiles_hw;
  int64_t oc_tiles;      // output-channel tiles per group
  int64_t grid_y;        // groups * oc_tiles
  int cin_g, kk, ncols;   // kk = kernel_h * kernel_w taps; ncols = cin_g * kk columns
  int64_t cout_g;
};

// Where one block works: image, tile origin, group.
struct BlockSite {
  int64_t n, g;
  int oh0, ow0;
};

template <typename T>
__device__ __forceinline__ void stage_patch(float* patch, const SparseConv2dParams& p, const Tiling& t,
                            const BlockSite& b, int c_lo, int c_hi) {
  const T* x = static_cast<const T*>(p.input);
  const int64_t plane = static_cast<int64_t>(p.in_h) * p.in_w;
  const int64_t chan0 = b.n * p.in_channels + b.g * t.cin_g + c_lo;
  const int64_t ih0 = static_cast<int64_t>(b.oh0) * p.stride_h - p.pad_h;
  const int64_t iw0 = static_cast<int64_t>(b.ow0) * p.stride_w - p.pad_w;
  const int rows = (c_hi - c_lo) * t.patch_h;
  for (int row = threadIdx.x / kWarp; row < rows; row += kWarps) {
    const int c = row / t.patch_h;
    const int64_t ih = ih0 + (row - c * t.patch_h);
    const bool row_in = ih >= 0 && ih < p.in_h;
    const int64_t base = (chan0 + c) * plane + ih * p.in_w;
    float* dst = patch + row * t.patch_w;
    for (int px = threadIdx.x % kWarp; px < t.patch_w; px += kWarp) {
      const int64_t iw = iw0 + px;
      dst[px] = (row_in && iw >= 0 && iw < p.in_w) ? to_float(__ldg(x + base + iw)) : 0.f;
    }
  }
}

// code >= 0: offset into the staged patch; kSkip: contributes nothing; else -1 - column (global).
__device__ __forceinline__ int decode(int col, const SparseConv2dParams& p, const Tiling& t,
                                      int c_lo, int c_hi) {
  if (col < 0 || col >= t.ncols) return kSkip;
  const int c = col / t.kk;
  const int tap = col - c * t.kk;
  const int r = tap / p.kernel_w, s = tap - r * p.kernel_w;
  if (c >= c_lo && c < c_hi)
    return (c - c_lo) * t.patch_h * t.patch_w + r * p.dil_h * t.patch_w + s * p.dil_w;
  return -1 - col;
}

// The bounds-checked path: reads the input itself, treating padding as zeros. Rows/columns are
// clamped to the last output pixel and computed modulo 2^32: the binding keeps Hp*Wp < 2^31, so a
// wrapped (negative) coordinate always lands >= in_h / in_w and fails the unsigned check.
template <typename T, int P>
__device__ __forceinline__ void accumulate_global(float (&acc)[P], float v, int col,
                                                  const SparseConv2dParams& p, const Tiling& t,
                                                  const BlockSite& b) {
  const T* x = static_cast<const T*>(p.input);
  const int c = col / t.kk;
  const int tap = col - c * t.kk;
  const unsigned rp = tap / p.kernel_w * p.dil_h, sp = tap % p.kernel_w * p.dil_w;
  const int64_t base = (b.n * p.in_channels + b.g * t.cin_g + c) * p.in_h * p.in_w;
#pragma unroll
  for (int j = 0; j < P; ++j) {
    const int q = j * kWarp + static_cast<int>(threadIdx.x % kWarp);
    const unsigned oh = min(b.oh0 + q / t.tile_w, p.out_h - 1);
    const unsigned ow = min(b.ow0 + q % t.tile_w, p.out_w - 1);
    const unsigned ih = oh * p.stride_h + rp - p.pad_h, iw = ow * p.stride_w + sp - p.pad_w;
    if (ih < static_cast<unsigned>(p.in_h) && iw < static_cast<unsigned>(p.in_w))
      acc[j] = fmaf(v, to_float(__ldg(x + base + static_cast<int64_t>(ih) * p.in_w + iw)), acc[j]);
  }
}

template <typename T, int P>
__device__ __forceinline__ void consume(float (&acc)[P], int count, const float2* batch,
                                        const float* patch, const int (&pix)[P],
                                        const SparseConv2dParams& p, const Tiling& t,
                                        const BlockSite& b) {
#pragma unroll 4
  for (int i = 0; i < count; ++i) {
    const float2 nz = batch[i];  // (value, code) in one shared load
    const float v = nz.x;
    const int code = __float_as_int(nz.y);
    if (code >= 0) {
      const float* src = patch + code;
#pragma unroll
      for (int j = 0; j < P; ++j) acc[j] = fmaf(v, src[pix[j]], acc[j]);
    } else if (code != kSkip) {
      accumulate_global<T, P>(acc, v, -1 - code, p, t, b);
    }
  }
}

// Walks one CSR row from `cur` while columns stay below the chunk's end (or to the row's end on
// the last chunk), 32 nonzeros at a time: each lane loads and decodes one, the warp consumes all.
template <typename T, int P>
__device__ __forceinline__ int64_t run_row(float (&acc)[P], int64_t cur, int64_t end, int c_lo, int c_hi,
                           bool last, float2* batch, const float* patch,
                           const int (&pix)[P], const SparseConv2dParams& p, const Tiling& t,
                           const BlockSite& b) {
  const int lane = threadIdx.x % kWarp;
  const int64_t limit = static_cast<int64_t>(c_hi) * t.kk;
  while (cur < end) {
    const int64_t k = cur + lane;
    const bool have = k < end;
    const int off = have ? __ldg(p.col_idx + k) : 0;
    const float v = have ? __ldg(p.values + k) : 0.f;
    const unsigned taken = __ballot_sync(0xffffffffu, have && (last || off < limit));
    const int count = taken == 0xffffffffu ? kWarp : __ffs(~taken) - 1;
    __syncwarp();  // every lane is done reading the previous batch
    if (lane < count) batch[lane] = make_float2(v, __int_as_float(decode(off, p, t, c_lo, c_hi)));
    __syncwarp();
    consume<T, P>(acc, count, batch, patch, pix, p, t, b);
    cur += count;
    if (count < kWarp) break;
  }
  return cur;
}

__device__ __forceinline__ float activate(float v, int activation) {
  switch (activation) {
    case 1: return v < 0.f ? 0.f : v;  // a NaN stays NaN, as in torch
    case 2: return v < 0.f ? 0.f : (v > 6.f ? 6.f : v);
    case 3: return v / (1.f + __expf(-v));
    default: return v;
  }
}

template <typename T, int P, int OCW>
__device__ __forceinline__ void store(const float (&acc)[OCW][P], int64_t oc0, int64_t oc_end,
                      const SparseConv2dParams& p, const Tiling& t, const BlockSite& b) {
  T* out = static_cast<T*>(p.output);
  const T* res = static_cast<const T*>(p.residual);
#pragma unroll
  for (int i = 0; i < OCW; ++i) {
    const int64_t oc = oc0 + i;
    if (oc >= oc_end) break;
    const float bias = p.bias ? __ldg(p.bias + oc) : 0.f;
    const int64_t base = (b.n * p.out_channels + oc) * p.out_h * p.out_w;
#pragma unroll
    for (int j = 0; j < P; ++j) {
      const int q = j * kWarp + static_cast<int>(threadIdx.x % kWarp);
      const int oh = b.oh0 + q / t.tile_w, ow = b.ow0 + q % t.tile_w;
      if (oh < p.out_h && ow < p.out_w) {
        const int64_t at = base + static_cast<int64_t>(oh) * p.out_w + ow;
        const float v = acc[i][j] + bias + (res ? to_float(res[at]) : 0.f);
        out[at] = from_float<T>(activate(v, p.activation));
      }
    }
  }
}

// True when a zero (pruned) weight of the row starting at `k` (sorted columns up to `end`) meets
// an inf or NaN input of output pixel (oh, ow): the dense convolution gives NaN there. A merge walk
// over all Cin/groups*kh*kw columns; only run when the input holds such a value.
template <typename T>
__device__ bool pruned_tap_nonfinite(int64_t k, int64_t end, int oh, int ow,
                                     const SparseConv2dParams& p, const Tiling& t,
                                     const BlockSite& b) {
  const T* x = static_cast<const T*>(p.input);
  for (int col = 0; col < t.ncols; ++col) {
    if (k < end && __ldg(p.col_idx + k) == col) {
      ++k;
      continue;
    }
    const int c = col / t.kk, tap = col - c * t.kk;
    const int64_t ih = static_cast<int64_t>(oh) * p.stride_h + tap / p.kernel_w * p.dil_h - p.pad_h;
    const int64_t iw = static_cast<int64_t>(ow) * p.stride_w + tap % p.kernel_w * p.dil_w - p.pad_w;
    if (ih < 0 || ih >= p.in_h || iw < 0 || iw >= p.in_w) continue;
    const int64_t chan = b.n * p.in_channels + b.g * t.cin_g + c;
    if (!isfinite(to_float(x[(chan * p.in_h + ih) * p.in_w + iw]))) return true;
  }
  return false;
}

template <typename T, int P, int OCW>
__device__ void mark_hidden_nonfinite(float (&acc)[OCW][P], const int64_t (&start)[OCW],
                                      const int64_t (&end)[OCW], int64_t oc0, int64_t oc_end,
                                      const SparseConv2dParams& p, const Tiling& t,
                                      const BlockSite& b) {
#pragma unroll
  for (int i = 0; i < OCW; ++i) {
    if (oc0 + i >= oc_end) break;
#pragma unroll
    for (int j = 0; j < P; ++j) {
      const int q = j * kWarp + static_cast<int>(threadIdx.x % kWarp);
      const int oh = b.oh0 + q / t.tile_w, ow = b.ow0 + q % t.tile_w;
      if (oh < p.out_h && ow < p.out_w && pruned_tap_nonfinite<T>(start[i], end[i], oh, ow, p, t, b))
        acc[i][j] = __int_as_float(0x7fc00000);  // quiet NaN
    }
  }
}

template <typename T, int P, int OCW>
__device__ __forceinline__ void conv_tile(float* patch, float2* batch, const int (&pix)[P],
                          int64_t tile_y, const SparseConv2dParams& p, const Tiling& t,
                          const BlockSite& b) {
  const int64_t oc0 = b.g * t.cout_g + (tile_y % t.oc_tiles) * (kWarps * OCW) +
                      static_cast<int64_t>(threadIdx.x / kWarp) * OCW;
  const int64_t oc_end = (b.g + 1) * t.cout_g;
  float acc[OCW][P] = {};
  int64_t cur[OCW], start[OCW], end[OCW];
#pragma unroll
  for (int i = 0; i < OCW; ++i) {
    const bool own = oc0 + i < oc_end;
    cur[i] = own ? min(max(static_cast<int64_t>(__ldg(p.row_ptr + oc0 + i)), int64_t{0}), p.nnz) : 0;
    end[i] = own ? min(max(static_cast<int64_t>(__ldg(p.row_ptr + oc0 + i + 1)), cur[i]), p.nnz) : 0;
    start[i] = cur[i];
  }
  const int chunks = t.chunk > 0 ? (t.cin_g + t.chunk - 1) / t.chunk : 1;
  for (int ck = 0; ck < max(chunks, 1); ++ck) {
    const int c_lo = ck * t.chunk, c_hi = min(t.cin_g, c_lo + t.chunk);
    if (c_hi > c_lo) {  // block-uniform
      __syncthreads();  // the previous chunk (or tile) is fully consumed
      stage_patch<T>(patch, p, t, b, c_lo, c_hi);
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < OCW; ++i)
      cur[i] = run_row<T, P>(acc[i], cur[i], end[i], c_lo, c_hi, ck + 1 >= chunks, batch, patch,
                             pix, p, t, b);
  }
  if (p.nonfinite != nullptr && *p.nonfinite)  // block-uniform
    mark_hidden_nonfinite<T, P, OCW>(acc, start, end, oc0, oc_end, p, t, b);
  store<T, P, OCW>(acc, oc0, oc_end, p, t, b);
}

template <typename T, int P, int OCW>
__global__ void __launch_bounds__(kThreads, 2)
    sparse_conv2d_kernel(const SparseConv2dParams p, const Tiling t) {
  extern __shared__ float patch[];
  __shared__ float2 nz_batch[kWarps][kWarp];  // each warp's current 32 decoded nonzeros
  const int tile = static_cast<int>(blockIdx.x % t.tiles_hw);
  BlockSite b{static_cast<int64_t>(blockIdx.x / t.tiles_hw), 0, (tile / t.tiles_w) * t.tile_h,
              (tile % t.tiles_w) * t.tile_w};
  int pix[P];  // offset of each of this lane's pixels inside the patch
#pragma unroll
  for (int j = 0; j < P; ++j) {
    const int q = j * kWarp + static_cast<int>(threadIdx.x % kWarp);
    pix[j] = t.chunk > 0 ? (q / t.tile_w) * p.stride_h * t.patch_w + (q % t.tile_w) * p.stride_w
                         : 0;
  }
  const int warp = threadIdx.x / kWarp;
  for (int64_t y = blockIdx.y; y < t.grid_y; y += gridDim.y) {
    b.g = y / t.oc_tiles;
    conv_tile<T, P, OCW>(patch, nz_batch[warp], pix, y, p, t, b);
  }
}

int next_pow2(int v) {
  int r = 1;
  while (r < v && r < kWarp) r *= 2;
  return r;
}

Tiling make_tiling(const SparseConv2dParams& p, int P, int OCW) {
  Tiling t{};
  t.tile_w = next_pow2(p.out_w);
  t.tile_h = kWarp * P / t.tile_w;
  const int64_t ph = static_cast<int64_t>(t.tile_h - 1) * p.stride_h +
                     static_cast<int64_t>(p.kernel_h - 1) * p.dil_h + 1;
  const int64_t pw = static_cast<int64_t>(t.tile_w - 1) * p.stride_w +
                     static_cast<int64_t>(p.kernel_w - 1) * p.dil_w + 1;
  t.cin_g = static_cast<int>(p.in_channels / p.groups);
  t.cout_g = p.out_channels / p.groups;
  const int64_t per_chan = ph * pw * static_cast<int64_t>(sizeof(float));
  t.chunk = static_cast<int>(std::min(static_cast<int64_t>(t.cin_g), kPatchBytes / per_chan));
  t.patch_h = t.chunk > 0 ? static_cast<int>(ph) : 0;
  t.patch_w = t.chunk > 0 ? static_cast<int>(pw) : 0;
  t.tiles_w = (p.out_w + t.tile_w - 1) / t.tile_w;
  t.tiles_hw = static_cast<int64_t>(t.tiles_w) * ((p.out_h + t.tile_h - 1) / t.tile_h);
  t.oc_tiles = (t.cout_g + kWarps * OCW - 1) / (kWarps * OCW);
  t.grid_y = p.groups * t.oc_tiles;
  t.kk = p.kernel_h * p.kernel_w;
  t.ncols = t.cin_g * t.kk;
  return t;
}

template <typename T, int P, int OCW>
cudaError_t launch_config(const SparseConv2dParams& p, const Tiling& t, cudaStream_t stream) {
  const int64_t blocks_x = p.batch * t.tiles_hw;
  if (blocks_x > INT_MAX) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(blocks_x),
                  static_cast<unsigned>(std::min(t.grid_y, int64_t{65535})));
  const size_t smem = static_cast<size_t>(t.chunk) * t.patch_h * t.patch_w * sizeof(float);
  sparse_conv2d_kernel<T, P, OCW><<<grid, kThreads, smem, stream>>>(p, t);
  return cudaGetLastError();
}

int sm_count() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    cudaGetLastError();  // clear, and assume a large GPU
    return 132;
  }
  return sms;
}

template <typename T>
__global__ void find_nonfinite(const T* x, int64_t n, int* flag) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step)
    if (!isfinite(to_float(x[i]))) {
      *flag = 1;  // every writer writes the same value
      return;
    }
}

template <typename T>
cudaError_t scan_nonfinite(const SparseConv2dParams& p, cudaStream_t stream) {
  cudaError_t err = cudaMemsetAsync(p.nonfinite, 0, sizeof(int), stream);
  if (err != cudaSuccess) return err;
  const int64_t n = p.batch * p.in_channels * p.in_h * p.in_w;
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t{sm_count()} * 8);
  if (blocks > 0)
    find_nonfinite<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        static_cast<const T*>(p.input), n, p.nonfinite);
  return cudaGetLastError();
}

// Largest output-channel and pixel tiles that still give every SM a block: big tiles stage each
// input patch fewer times; batch 1 on small images needs small tiles to fill the GPU.
template <typename T>
cudaError_t launch_typed(const SparseConv2dParams& p, cudaStream_t stream) {
  constexpr int kConfigs[][2] = {{4, 4}, {4, 2}, {2, 2}, {2, 1}, {1, 1}};
  const int sms = sm_count();
  int pick = 4;
  for (int i = 0; i < 5; ++i) {
    const Tiling t = make_tiling(p, kConfigs[i][0], kConfigs[i][1]);
    if (p.batch * t.tiles_hw * t.grid_y >= sms) {
      pick = i;
      break;
    }
  }
  const Tiling t = make_tiling(p, kConfigs[pick][0], kConfigs[pick][1]);
  if (p.nonfinite != nullptr) {
    const cudaError_t err = scan_nonfinite<T>(p, stream);
    if (err != cudaSuccess) return err;
  }
  switch (pick) {
    case 0: return launch_config<T, 4, 4>(p, t, stream);
    case 1: return launch_config<T, 4, 2>(p, t, stream);
    case 2: return launch_config<T, 2, 2>(p, t, stream);
    case 3: return launch_config<T, 2, 1>(p, t, stream);
    default: return launch_config<T, 1, 1>(p, t, stream);
  }
}

}  // namespace

cudaError_t launch_sparse_conv2d(const SparseConv2dParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.out_channels == 0 || p.out_h <= 0 || p.out_w <= 0) return cudaSuccess;
  if (p.groups <= 0 || p.in_channels % p.groups || p.out_channels % p.groups ||
      p.kernel_h <= 0 || p.kernel_w <= 0 || p.stride_h <= 0 || p.stride_w <= 0 ||
      p.dil_h <= 0 || p.dil_w <= 0 || p.pad_h < 0 || p.pad_w < 0 || p.activation < 0 ||
      p.activation > 3)
    return cudaErrorInvalidValue;
  const int64_t hpwp = (p.in_h + 2 * static_cast<int64_t>(p.pad_h)) *
                       (p.in_w + 2 * static_cast<int64_t>(p.pad_w));
  const int64_t ncols = (p.in_channels / p.groups) * p.kernel_h * p.kernel_w;
  if (hpwp > INT_MAX || (p.in_channels / p.groups) * hpwp > INT_MAX || ncols > INT_MAX)
    return cudaErrorInvalidValue;
  switch (p.dtype) {
    case DType::Float32: return launch_typed<float>(p, stream);
    case DType::Float16: return launch_typed<__half>(p, stream);
    case DType::BFloat16: return launch_typed<__nv_bfloat16>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace compressor
