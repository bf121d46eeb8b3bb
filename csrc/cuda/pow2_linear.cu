// pow2_linear on CUDA: a GEMV/skinny GEMM that streams packed power-of-two codes.
//
// Memory-bound at small batch, so the design is about bytes: each warp owns R output rows and reads
// their codes with coalesced 16-byte loads (4-byte loads when a row is not a multiple of 16 bytes),
// the next chunk's loads in flight while the current one is decoded. The input rows of an M tile sit
// in shared memory in a lane-permuted order, so the float4 a lane needs for its columns is
// conflict-free. One x load serves the warp's R rows of weights; one decoded weight serves the MT
// input rows of the block's M tile.
//
// Decoding never builds a weight matrix: every weight is w = v * 2^n1 with v = +-2^-L (L in 0..7) or
// +-0, and v is made as a half from the nibble's bits (two weights per 32-bit op pair), converted
// exactly to float; 2^n1 is applied once per output with ldexp, so tiny or huge n1 lose nothing.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "compressor/pow2_cuda.h"

namespace compressor {
namespace {

constexpr int kWarp = 32;
constexpr int kWarps = 8;
constexpr int kThreads = kWarp * kWarps;
constexpr int kSmemBudget = 48 * 1024;  // the default dynamic limit: no opt-in needed
constexpr int kBlocksPerSm = 8;

// Everything the kernel needs, derived once on the host.
struct Pow2Args {
  const void* input;
  const uint8_t* codes;
  const uint8_t* bitmap;  // nullptr unless bits == 5
  const float* bias;
  void* out;
  int64_t M, N, K;
  int64_t row_bytes;     // K_pad / 2
  int64_t bitmap_bytes;  // K_pad / 8
  int64_t row_chunks;    // K_pad / (8 * VEC): chunks of VEC code words per row
  int64_t m_tiles;       // ceil(M / MT)
  int64_t items;         // m_tiles * ceil(N / (kWarps * R))
  int tile_cols;         // columns of x staged at once (multiple of 256 * VEC)
  int tile_iters;        // tile_cols / (256 * VEC): warp iterations per tile
  int num_tiles;
  int scale_exp;         // n1
};

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

__device__ __forceinline__ float load_acc(const float* p) { return *p; }
__device__ __forceinline__ double load_acc(const double* p) { return *p; }
__device__ __forceinline__ float load_acc(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float load_acc(const __nv_bfloat16* p) { return __bfloat162float(*p); }

__device__ __forceinline__ void store_out(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_out(double* p, double v) { *p = v; }
__device__ __forceinline__ void store_out(__half* p, float v) { *p = __float2half(v); }
__device__ __forceinline__ void store_out(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }

__device__ __forceinline__ float scale_pow2(float v, int e) { return ldexpf(v, e); }
__device__ __forceinline__ double scale_pow2(double v, int e) { return ldexp(v, e); }

__device__ __forceinline__ void load4(const float* p, float (&x)[4]) {
  const float4 t = *reinterpret_cast<const float4*>(p);
  x[0] = t.x; x[1] = t.y; x[2] = t.z; x[3] = t.w;
}
__device__ __forceinline__ void load4(const double* p, double (&x)[4]) {
  const double2 a = reinterpret_cast<const double2*>(p)[0];
  const double2 b = reinterpret_cast<const double2*>(p)[1];
  x[0] = a.x; x[1] = a.y; x[2] = b.x; x[3] = b.y;
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <int kShift>
__device__ __forceinline__ uint32_t shift_left(uint32_t x) {
  if constexpr (kShift >= 0) {
    return x << kShift;
  } else {
    return x >> (-kShift);
  }
}

// Normalised nibbles: bit 3 = weight is nonzero, bits 0-2 = L with |w| = 2^(n1 - L).
// bits <= 4: nibble m (1..7) -> 8 + (m - 1), m = 0 -> 7. The 0x8 guard bits stop borrows between
// nibbles, and a zero weight lands on L = 7, which decode_pair turns into exactly 0.
__device__ __forceinline__ uint32_t nibbles_4bit(uint32_t w) {
  return (w | 0x88888888u) - 0x11111111u;
}

// Bit i of an 8-bit mask -> bit 4i.
__device__ __forceinline__ uint32_t spread_to_nibbles(uint32_t b) {
  b = (b | (b << 12)) & 0x000F000Fu;
  b = (b | (b << 6)) & 0x03030303u;
  return (b | (b << 3)) & 0x11111111u;
}

// bits == 5: L = m when the bitmap says nonzero; zero weights get L = 7 and bit 3 clear.
__device__ __forceinline__ uint32_t nibbles_5bit(uint32_t w, uint32_t mask_byte) {
  const uint32_t nz = spread_to_nibbles(mask_byte);
  return ((w | ~(nz * 7u)) & 0x77777777u) | (nz << 3);
}

// Weights of nibbles I and I+4 at once, as the two halves of a half2: nibble (nz, L) at exponent
// bits 10-13 xor 0b0111 gives exponent 15 - L (value 2^-L) when nz, and 0 (value 0) when not.
template <int I, typename A>
__device__ __forceinline__ void decode_pair(uint32_t w, uint32_t n, A (&v)[8]) {
  const uint32_t exponent = (shift_left<10 - 4 * I>(n) ^ 0x1C001C00u) & 0x3C003C00u;
  const uint32_t h = exponent | (shift_left<12 - 4 * I>(w) & 0x80008000u);  // the sign bits
  __half2_raw raw;
  raw.x = static_cast<unsigned short>(h & 0xFFFFu);
  raw.y = static_cast<unsigned short>(h >> 16);
  const float2 f = __half22float2(__half2(raw));
  v[I] = static_cast<A>(f.x);
  v[I + 4] = static_cast<A>(f.y);
}

// The 8 weights of one code word (columns 8q..8q+7 in nibble order) as +-2^-L or +-0.
template <typename A>
__device__ __forceinline__ void decode_word(uint32_t w, uint32_t n, A (&v)[8]) {
  decode_pair<0>(w, n, v);
  decode_pair<1>(w, n, v);
  decode_pair<2>(w, n, v);
  decode_pair<3>(w, n, v);
}

template <int VEC>
__device__ __forceinline__ void load_words(const uint8_t* p, uint32_t (&w)[VEC]) {
  if constexpr (VEC == 4) {
    const uint4 t = __ldg(reinterpret_cast<const uint4*>(p));
    w[0] = t.x; w[1] = t.y; w[2] = t.z; w[3] = t.w;
  } else {
    w[0] = __ldg(reinterpret_cast<const unsigned int*>(p));
  }
}

template <int VEC>
__device__ __forceinline__ uint32_t load_mask(const uint8_t* p) {
  if constexpr (VEC == 4) {
    return __ldg(reinterpret_cast<const unsigned int*>(p));
  } else {
    return __ldg(p);
  }
}

// Code words (and bitmap bytes) of chunk `chunk` for the warp's R rows; rows past N read as zeros.
template <int R, int VEC>
__device__ __forceinline__ void load_chunk(const Pow2Args& a, int64_t row0, int64_t chunk,
                                           uint32_t (&cw)[R][VEC], uint32_t (&bm)[R]) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t row = row0 + r;
    if (row < a.N) {
      load_words<VEC>(a.codes + row * a.row_bytes + chunk * (4 * VEC), cw[r]);
      bm[r] = a.bitmap ? load_mask<VEC>(a.bitmap + row * a.bitmap_bytes + chunk * VEC) : 0u;
    } else {
#pragma unroll
      for (int q = 0; q < VEC; ++q) cw[r][q] = 0u;
      bm[r] = 0u;
    }
  }
}

// acc[r][mt] += the chunk's 8*VEC weights of row r times the matching x of input row mt.
template <typename A, int MT, int R, int VEC>
__device__ __forceinline__ void accumulate_chunk(const Pow2Args& a, const A* xs, int it, int lane,
                                                 const uint32_t (&cw)[R][VEC],
                                                 const uint32_t (&bm)[R], A (&acc)[R][MT]) {
#pragma unroll
  for (int q = 0; q < VEC; ++q) {
    A v[R][8];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const uint32_t w = cw[r][q];
      const uint32_t n = a.bitmap ? nibbles_5bit(w, (bm[r] >> (8 * q)) & 0xFFu) : nibbles_4bit(w);
      decode_word(w, n, v[r]);
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      // Layout of a staged tile: [mt][it][group of 4 columns][lane][4].
      const A* xp = xs + mt * a.tile_cols + ((it * 2 * VEC + 2 * q) * kWarp + lane) * 4;
      A lo[4], hi[4];
      load4(xp, lo);
      load4(xp + kWarp * 4, hi);
#pragma unroll
      for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          acc[r][mt] = fma(v[r][i], lo[i], acc[r][mt]);
          acc[r][mt] = fma(v[r][i + 4], hi[i], acc[r][mt]);
        }
      }
    }
  }
}

// One staged tile: lane l handles chunks tile_start + it*32 + l, loading chunk it+1 while
// decoding chunk it.
template <typename A, int MT, int R, int VEC>
__device__ __forceinline__ void accumulate_tile(const Pow2Args& a, const A* xs, int64_t row0,
                                                int tile, int lane, A (&acc)[R][MT]) {
  int64_t chunk = static_cast<int64_t>(tile) * a.tile_iters * kWarp + lane;
  if (chunk >= a.row_chunks) return;
  uint32_t cw[R][VEC], bm[R];
  load_chunk<R, VEC>(a, row0, chunk, cw, bm);
  for (int it = 0;; ++it) {
    const int64_t next = chunk + kWarp;
    const bool more = it + 1 < a.tile_iters && next < a.row_chunks;
    uint32_t nw[R][VEC] = {}, nb[R] = {};
    if (more) load_chunk<R, VEC>(a, row0, next, nw, nb);
    accumulate_chunk<A, MT, R, VEC>(a, xs, it, lane, cw, bm, acc);
    if (!more) return;
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int q = 0; q < VEC; ++q) cw[r][q] = nw[r][q];
      bm[r] = nb[r];
    }
    chunk = next;
  }
}

// Copies columns [tile*tile_cols, +tile_cols) of input rows mtile*MT.. into shared memory in the
// permuted layout (zeros past M and K). Consecutive threads write consecutive words: no conflicts.
template <typename T, typename A, int MT, int VEC>
__device__ __forceinline__ void stage_x(const Pow2Args& a, A* xs, int64_t mtile, int tile) {
  constexpr int kGroupBits = VEC == 4 ? 3 : 1;  // log2(2 * VEC) groups of 4 columns per chunk
  const T* x = static_cast<const T*>(a.input);
  const int64_t col0 = static_cast<int64_t>(tile) * a.tile_cols;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int64_t m = mtile * MT + mt;
    A* dst = xs + mt * a.tile_cols;
    for (int s = threadIdx.x; s < a.tile_cols; s += kThreads) {
      const int e = s & 3, lane = (s >> 2) & (kWarp - 1);
      const int g = (s >> 7) & (2 * VEC - 1), it = s >> (7 + kGroupBits);
      const int64_t col = col0 + static_cast<int64_t>(it * kWarp + lane) * (8 * VEC) + g * 4 + e;
      dst[s] = (m < a.M && col < a.K) ? static_cast<A>(load_acc(x + m * a.K + col)) : A(0);
    }
  }
}

// Reduces each accumulator over the warp; a different lane writes each output.
template <typename T, typename A, int MT, int R>
__device__ __forceinline__ void store_rows(const Pow2Args& a, A (&acc)[R][MT], int64_t row0,
                                           int64_t mtile, int lane) {
  T* out = static_cast<T*>(a.out);
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const A sum = warp_sum(acc[r][mt]);
      const int64_t row = row0 + r, m = mtile * MT + mt;
      if (lane == (r * MT + mt) % kWarp && row < a.N && m < a.M) {
        A y = scale_pow2(sum, a.scale_exp);
        if (a.bias != nullptr) y += static_cast<A>(a.bias[row]);
        store_out(out + m * a.N + row, y);
      }
    }
  }
}

// Work item = (tile of MT input rows, group of kWarps*R output rows); blocks stride over items.
// With a single K tile the staged x is kept while a block's M tile does not change.
template <typename T, int MT, int R, int VEC>
__global__ void __launch_bounds__(kThreads) pow2_linear_kernel(const Pow2Args a) {
  using A = typename Acc<T>::type;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* xs = reinterpret_cast<A*>(smem_raw);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  int64_t staged = -1;
  for (int64_t item = blockIdx.x; item < a.items; item += gridDim.x) {
    const int64_t mtile = item % a.m_tiles;
    const int64_t row0 = (item / a.m_tiles) * (kWarps * R) + warp * R;
    A acc[R][MT];
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) acc[r][mt] = A(0);
    }
    for (int tile = 0; tile < a.num_tiles; ++tile) {
      if (a.num_tiles > 1 || staged != mtile) {  // block-uniform condition
        __syncthreads();  // every warp is done with the previous tile
        stage_x<T, A, MT, VEC>(a, xs, mtile, tile);
        __syncthreads();
        staged = mtile;
      }
      if (row0 < a.N) accumulate_tile<A, MT, R, VEC>(a, xs, row0, tile, lane, acc);
    }
    store_rows<T, A, MT, R>(a, acc, row0, mtile, lane);
  }
}

template <typename T, int MT, int R, int VEC>
cudaError_t launch_shape(const Pow2LinearParams& p, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  constexpr int64_t kChunkCols = 8 * VEC, kWarpCols = kWarp * kChunkCols;
  constexpr int64_t kMaxTile = (kSmemBudget / (MT * sizeof(A))) / kWarpCols * kWarpCols;
  static_assert(kMaxTile >= kWarpCols, "shared memory budget too small for one warp pass");
  const int64_t k_pad = (p.K + 7) / 8 * 8;
  const int64_t k_round = (k_pad + kWarpCols - 1) / kWarpCols * kWarpCols;
  const int64_t tile = k_round < kWarpCols ? kWarpCols : (k_round < kMaxTile ? k_round : kMaxTile);
  const int64_t num_tiles = (k_pad + tile - 1) / tile;
  const int64_t row_groups = (p.N + kWarps * R - 1) / (kWarps * R);
  const int64_t m_tiles = (p.M + MT - 1) / MT;
  if (num_tiles > INT_MAX || row_groups > INT64_MAX / m_tiles) return cudaErrorInvalidValue;

  Pow2Args a{};
  a.input = p.input; a.codes = p.codes; a.bitmap = p.nonzero; a.bias = p.bias; a.out = p.out;
  a.M = p.M; a.N = p.N; a.K = p.K;
  a.row_bytes = k_pad / 2;
  a.bitmap_bytes = k_pad / 8;
  a.row_chunks = k_pad / kChunkCols;
  a.m_tiles = m_tiles;
  a.items = row_groups * m_tiles;
  a.tile_cols = static_cast<int>(tile);
  a.tile_iters = static_cast<int>(tile / kWarpCols);
  a.num_tiles = static_cast<int>(num_tiles);
  a.scale_exp = p.n1 < -4096 ? -4096 : (p.n1 > 4096 ? 4096 : p.n1);

  int device = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  const int64_t max_grid = static_cast<int64_t>(sms > 0 ? sms : 1) * kBlocksPerSm;
  const unsigned grid = static_cast<unsigned>(a.items < max_grid ? a.items : max_grid);
  const size_t smem = static_cast<size_t>(MT) * static_cast<size_t>(tile) * sizeof(A);
  pow2_linear_kernel<T, MT, R, VEC><<<grid, kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

// Tile over M: each decoded weight is reused for MT input rows; R output rows share each x load.
template <typename T, int VEC>
cudaError_t launch_batch(const Pow2LinearParams& p, cudaStream_t stream) {
  if constexpr (sizeof(T) == 8) {
    return launch_shape<T, 1, 2, VEC>(p, stream);  // float64: a correctness path
  } else {
    if (p.M == 1) return launch_shape<T, 1, 2, VEC>(p, stream);
    if (p.M == 2) return launch_shape<T, 2, 2, VEC>(p, stream);
    if (p.M <= 4) return launch_shape<T, 4, 4, VEC>(p, stream);
    return launch_shape<T, 8, 4, VEC>(p, stream);
  }
}

template <typename T>
cudaError_t launch_typed(const Pow2LinearParams& p, cudaStream_t stream, bool wide) {
  return wide ? launch_batch<T, 4>(p, stream) : launch_batch<T, 1>(p, stream);
}

bool aligned(const void* p, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

}  // namespace

cudaError_t launch_pow2_linear(const Pow2LinearParams& p, cudaStream_t stream) {
  if (p.M < 0 || p.N < 0 || p.K < 0 || p.bits < 2 || p.bits > 5) return cudaErrorInvalidValue;
  if (p.bits != 5 && p.nonzero != nullptr) return cudaErrorInvalidValue;
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  // Empty tensors may have null data: with K == 0 no code is read.
  if (p.input == nullptr && p.K > 0) return cudaErrorInvalidValue;
  if (p.out == nullptr || (p.K > 0 && (p.codes == nullptr ||
                                       (p.bits == 5 && p.nonzero == nullptr)))) {
    return cudaErrorInvalidValue;
  }
  if (!aligned(p.codes, 4) || !aligned(p.nonzero, 4)) return cudaErrorMisalignedAddress;
  const int64_t k_pad = (p.K + 7) / 8 * 8;
  // 16-byte code loads need every row to start on a 16-byte boundary (K_pad % 32 == 0).
  const bool wide = k_pad % 32 == 0 && aligned(p.codes, 16);
  switch (p.dtype) {
    case DType::Float32: return launch_typed<float>(p, stream, wide);
    case DType::Float64: return launch_typed<double>(p, stream, wide);
    case DType::Float16: return launch_typed<__half>(p, stream, wide);
    case DType::BFloat16: return launch_typed<__nv_bfloat16>(p, stream, wide);
  }
  return cudaErrorInvalidValue;
}

}  // namespace compressor
