// Shared pieces of the CPU direct sparse convolution: geometry, arguments and the register-blocked
// micro-kernel (an AXPY of one CSR row's nonzeros over up to kTile contiguous positions).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define COMPRESSOR_SPARSE_AVX2 1
#endif

namespace compressor::sparse_cpu {

constexpr int kLanes = 8;           // floats per AVX2 register
constexpr int kMaxVectors = 8;      // accumulators held in registers (16 ymm in all)
constexpr int kTile = kLanes * kMaxVectors;
constexpr int64_t kRunTiles = 4;       // tiles per conv task: enough tasks for threads at batch 1
constexpr int64_t kL2Floats = 16 * 1024;  // input floats one conv task keeps hot (64 KiB)

struct ConvGeom {
  int64_t N, Cin, H, W, Cout, groups, cin_g, cout_g;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t Hp, Wp, Ho, Wo;
  int64_t Hq, Wq;   // one phase plane (stride phase of the padded input)
  int64_t plane;    // Hq * Wq
  int64_t chan;     // sh * sw * plane: one input channel of the phased buffer
  int64_t span;     // (Ho - 1) * Wq + Wo virtual output positions
};

struct ConvArgs {
  ConvGeom geom;
  const float* input;     // phased, padded: (N, Cin, sh, sw, Hq, Wq)
  const float* values;    // (nnz)
  const int32_t* offsets; // (nnz) into one group's channels of the phased buffer
  const int32_t* row_ptr; // (Cout + 1)
  const int32_t* segs;    // (Cout, ncb + 1): where each row's input-channel blocks start
  int64_t ncb;            // input-channel blocks (1 when rows are not sorted by channel)
  const float* bias;      // (Cout) or nullptr
  float* output;          // (N, Cout, Ho, Wo)
};

ConvGeom make_geom(const at::Tensor& input, int64_t cout, at::IntArrayRef k, at::IntArrayRef s,
                   at::IntArrayRef p, at::IntArrayRef d, int64_t groups);
void conv_forward(const ConvArgs& args);

#ifdef COMPRESSOR_SPARSE_AVX2
// acc[0 : NV*8) = init + sum_k vals[k] * in[offs[k] + 0 : NV*8); with kMasked the last vector
// reads only `tail` lanes (maskload never touches the others, so nothing past the slice is read).
// With `resume` the sums start from acc instead of init.
template <int NV, bool kMasked>
inline void axpy_tile_avx2(const float* vals, const int32_t* offs, int64_t nnz, const float* in,
                           float init, int tail, float* acc, bool resume) {
  __m256 sum[NV];
  for (int j = 0; j < NV; ++j)
    sum[j] = resume ? _mm256_loadu_ps(acc + j * kLanes) : _mm256_set1_ps(init);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(tail), lane);
  constexpr int full = kMasked ? NV - 1 : NV;
  for (int64_t k = 0; k < nnz; ++k) {
    const __m256 v = _mm256_broadcast_ss(vals + k);
    const float* src = in + offs[k];
    for (int j = 0; j < full; ++j)
      sum[j] = _mm256_fmadd_ps(v, _mm256_loadu_ps(src + j * kLanes), sum[j]);
    if constexpr (kMasked)
      sum[NV - 1] =
          _mm256_fmadd_ps(v, _mm256_maskload_ps(src + (NV - 1) * kLanes, mask), sum[NV - 1]);
  }
  for (int j = 0; j < NV; ++j) _mm256_storeu_ps(acc + j * kLanes, sum[j]);
}

template <int NV>
inline void axpy_tile_nv(const float* vals, const int32_t* offs, int64_t nnz, const float* in,
                         float init, int64_t count, float* acc, bool resume) {
  const int tail = static_cast<int>(count - (NV - 1) * kLanes);
  if (tail == kLanes)
    axpy_tile_avx2<NV, false>(vals, offs, nnz, in, init, tail, acc, resume);
  else
    axpy_tile_avx2<NV, true>(vals, offs, nnz, in, init, tail, acc, resume);
}
#endif

// acc[0 : count) = (resume ? acc : init) + sum_k vals[k] * in[offs[k] + 0 : count), count <= kTile;
// acc is kTile long.
inline void axpy_tile(const float* vals, const int32_t* offs, int64_t nnz, const float* in,
                      float init, int64_t count, float* acc, bool resume = false) {
#ifdef COMPRESSOR_SPARSE_AVX2
  switch ((count + kLanes - 1) / kLanes) {
    case 1: return axpy_tile_nv<1>(vals, offs, nnz, in, init, count, acc, resume);
    case 2: return axpy_tile_nv<2>(vals, offs, nnz, in, init, count, acc, resume);
    case 3: return axpy_tile_nv<3>(vals, offs, nnz, in, init, count, acc, resume);
    case 4: return axpy_tile_nv<4>(vals, offs, nnz, in, init, count, acc, resume);
    case 5: return axpy_tile_nv<5>(vals, offs, nnz, in, init, count, acc, resume);
    case 6: return axpy_tile_nv<6>(vals, offs, nnz, in, init, count, acc, resume);
    case 7: return axpy_tile_nv<7>(vals, offs, nnz, in, init, count, acc, resume);
    default: return axpy_tile_nv<8>(vals, offs, nnz, in, init, count, acc, resume);
  }
#else
  if (!resume)
    for (int64_t i = 0; i < count; ++i) acc[i] = init;
  for (int64_t k = 0; k < nnz; ++k) {
    const float v = vals[k];
    const float* src = in + offs[k];
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) acc[i] += v * src[i];
  }
#endif
}

}  // namespace compressor::sparse_cpu
