// ON-LSTM fused cell on CUDA: one block per batch row. Warps 0 and 1 compute the two master gates
// (softmax + inclusive scan in 32-wide tiles with a running carry, as the cumax kernel does) into
// shared memory; then every thread handles hidden units j = tid, tid + blockDim, ... The backward
// sums the master-gate gradients per chunk with shared-memory atomics and finishes with the cumax
// backward s * (r - <s, r>) on warps 0 and 1.
#include <cuda_runtime.h>

#include "compressor/onlstm.h"

namespace compressor {
namespace {

constexpr int kWarp = 32;
constexpr unsigned kFull = 0xffffffffu;

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
  for (int o = kWarp / 2; o > 0; o /= 2) {
    const T other = __shfl_xor_sync(kFull, v, o);
    v = (other != other || other > v) ? other : v;  // keep NaN, as torch.softmax does
  }
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// Inclusive prefix sum over lanes (forward) or suffix sum (reverse).
template <bool kReverse, typename T>
__device__ __forceinline__ T warp_scan(T v, int lane) {
  for (int o = 1; o < kWarp; o *= 2) {
    const T other = kReverse ? __shfl_down_sync(kFull, v, o) : __shfl_up_sync(kFull, v, o);
    if (kReverse ? lane + o < kWarp : lane >= o) v += other;
  }
  return v;
}

template <typename T> __device__ __forceinline__ T sigmoid(T x) { return T(1) / (T(1) + exp(-x)); }

// Master logits of this row: x[j] (+ y[j] when y is given).
template <typename T>
__device__ __forceinline__ T logit(const T* x, const T* y, int64_t j) {
  return y ? x[j] + y[j] : x[j];
}

// One warp: s = softmax(logits) and cs = cumsum(s) over len; with kInvert stores 1 - cs.
// Returns the sum of what it stored (all lanes). s may be null when the caller does not need it.
template <bool kInvert, typename T>
__device__ T master_gate(const T* x, const T* y, int64_t len, int lane, T* s, T* out) {
  T mx = -INFINITY;
  for (int64_t j = lane; j < len; j += kWarp) {
    const T v = logit(x, y, j);
    mx = (v != v || v > mx) ? v : mx;
  }
  mx = warp_max(mx);
  T sum = 0;
  for (int64_t j = lane; j < len; j += kWarp) sum += exp(logit(x, y, j) - mx);
  const T inv = T(1) / warp_sum(sum);
  T carry = 0, total = 0;
  for (int64_t base = 0; base < len; base += kWarp) {
    const int64_t j = base + lane;
    const T sj = j < len ? exp(logit(x, y, j) - mx) * inv : T(0);
    const T cs = warp_scan<false>(sj, lane) + carry;
    if (j < len) {
      const T v = kInvert ? T(1) - cs : cs;
      out[j] = v;
      if (s) s[j] = sj;
      total += v;
    }
    carry = __shfl_sync(kFull, cs, kWarp - 1);
  }
  return warp_sum(total);
}

template <typename T>
__global__ void cell_forward_kernel(OnlstmCellParams p) {
  extern __shared__ unsigned char smem_raw[];
  T* im = reinterpret_cast<T*>(smem_raw);  // i~ = 1 - cumax(master in), (m)
  const int64_t D = p.hidden, C = p.chunk, m = D / C, G = 4 * D + 2 * m;
  T* fm = im + m;                           // f~ = cumax(master forget), (m)
  const int64_t row = blockIdx.x;
  const T* x = static_cast<const T*>(p.xg) + row * G;
  const T* y = p.hg ? static_cast<const T*>(p.hg) + row * G : nullptr;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (warp < 2) {
    T* dist = static_cast<T*>(p.dist) + 2 * row;
    if (warp == 0) {
      const T total = master_gate<true>(x, y, m, lane, static_cast<T*>(nullptr), im);
      if (lane == 0) dist[1] = total / T(m);
    } else {
      const T total = master_gate<false>(x + m, y ? y + m : y, m, lane, static_cast<T*>(nullptr),
                                         fm);
      if (lane == 0) dist[0] = T(1) - total / T(m);
    }
  }
  __syncthreads();
  const T* cp = static_cast<const T*>(p.c_prev) + row * D;
  T* h = static_cast<T*>(p.h) + row * D;
  T* c = static_cast<T*>(p.c) + row * D;
  T* act = p.act ? static_cast<T*>(p.act) + row * G + 2 * m : nullptr;
  const int64_t base = 2 * m;
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
    const T so = sigmoid(logit(x, y, base + j)), tg = tanh(logit(x, y, base + D + j));
    const T si = sigmoid(logit(x, y, base + 2 * D + j));
    const T sf = sigmoid(logit(x, y, base + 3 * D + j));
    const int64_t k = j / C;
    const T w = fm[k] * im[k];
    const T fh = sf * w + (fm[k] - w), ih = si * w + (im[k] - w);
    const T cy = fh * cp[j] + ih * tg;
    c[j] = cy;
    h[j] = so * tanh(cy);
    if (act) {  // the same thread read these four values above, so writing over xg is safe
      act[j] = so;
      act[D + j] = tg;
      act[2 * D + j] = si;
      act[3 * D + j] = sf;
    }
  }
}

// One warp: dx = s * (r - <s, r>) with r the reverse cumsum of gy (m values in shared memory).
template <typename T>
__device__ void cumax_grad(const T* gy, const T* s, int64_t len, int lane, T* dx) {
  const int64_t last_tile = ((len - 1) / kWarp) * kWarp;
  T carry = 0, dot = 0;
  for (int64_t base = last_tile; base >= 0; base -= kWarp) {
    const int64_t j = base + lane;
    T r = j < len ? gy[j] : T(0);
    r = warp_scan<true>(r, lane) + carry;
    if (j < len) {
      dot += s[j] * r;
      dx[j] = r;  // kept until <s, r> is known; each lane reads back only its own writes
    }
    carry = __shfl_sync(kFull, r, 0);
  }
  dot = warp_sum(dot);
  for (int64_t j = lane; j < len; j += kWarp) dx[j] = s[j] * (dx[j] - dot);
}

template <typename T>
__global__ void cell_backward_kernel(OnlstmCellBackwardParams p) {
  extern __shared__ unsigned char smem_raw[];
  const int64_t D = p.hidden, C = p.chunk, m = D / C, G = 4 * D + 2 * m;
  T* s_in = reinterpret_cast<T*>(smem_raw);
  T* s_fg = s_in + m;
  T* im = s_fg + m;
  T* fm = im + m;
  T* gim = fm + m;  // dL/d i~ summed over each chunk
  T* gfm = gim + m;  // dL/d f~ summed over each chunk
  const int64_t row = blockIdx.x;
  const T* a = static_cast<const T*>(p.gates) + row * G;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  for (int64_t k = threadIdx.x; k < m; k += blockDim.x) gim[k] = gfm[k] = T(0);
  if (warp == 0) master_gate<true>(a, static_cast<const T*>(nullptr), m, lane, s_in, im);
  if (warp == 1) master_gate<false>(a + m, static_cast<const T*>(nullptr), m, lane, s_fg, fm);
  __syncthreads();
  const int64_t off = row * D;
  const T* gh = static_cast<const T*>(p.grad_h) + off;
  const T* gc = static_cast<const T*>(p.grad_c) + off;
  const T* cp = static_cast<const T*>(p.c_prev) + off;
  const T* cy = static_cast<const T*>(p.c) + off;
  T* dcp = static_cast<T*>(p.grad_c_prev) + off;
  const T* ao = a + 2 * m;
  T* dg = static_cast<T*>(p.grad_gates) + row * G;
  T* dgo = dg + 2 * m;
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
    T so = ao[j], tg = ao[D + j], si = ao[2 * D + j], sf = ao[3 * D + j];
    if (!p.activated) {
      so = sigmoid(so);
      tg = tanh(tg);
      si = sigmoid(si);
      sf = sigmoid(sf);
    }
    const int64_t k = j / C;
    const T tc = tanh(cy[j]);
    const T dct = gc[j] + gh[j] * so * (T(1) - tc * tc);
    const T w = fm[k] * im[k];
    const T fh = sf * w + (fm[k] - w), ih = si * w + (im[k] - w);
    const T dfh = dct * cp[j], dih = dct * tg;
    dgo[j] = gh[j] * tc * so * (T(1) - so);
    dgo[D + j] = dct * ih * (T(1) - tg * tg);
    dgo[2 * D + j] = dih * w * si * (T(1) - si);
    dgo[3 * D + j] = dfh * w * sf * (T(1) - sf);
    dcp[j] = dct * fh;
    const T dw = dfh * (sf - T(1)) + dih * (si - T(1));
    atomicAdd(gfm + k, dfh + dw * im[k]);
    atomicAdd(gim + k, dih + dw * fm[k]);
  }
  __syncthreads();
  // d_f = 1 - mean(f~), d_i = mean(i~); i~ = 1 - cumax, so its cumax sees the negated gradient.
  const T* gd = static_cast<const T*>(p.grad_dist) + 2 * row;
  const T inv_m = T(1) / T(m);
  for (int64_t k = threadIdx.x; k < m; k += blockDim.x) {
    gfm[k] -= gd[0] * inv_m;
    gim[k] = -(gim[k] + gd[1] * inv_m);
  }
  __syncthreads();
  if (warp == 0) cumax_grad(gim, s_in, m, lane, dg);
  if (warp == 1) cumax_grad(gfm, s_fg, m, lane, dg + m);
}

// At least two warps (one per master gate), at most 256 threads, enough for D.
int threads_for(int64_t hidden) {
  const int64_t want = (hidden + kWarp - 1) / kWarp * kWarp;
  return static_cast<int>(want < 2 * kWarp ? 2 * kWarp : (want > 256 ? 256 : want));
}

// Shared memory: onlstm_shared_bytes (compressor/onlstm.h).
template <typename P>
cudaError_t launch_rows(void (*kernel)(P), const P& p, size_t elem, bool backward,
                        cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  if (p.chunk <= 0 || p.hidden <= 0 || p.hidden % p.chunk != 0) return cudaErrorInvalidValue;
  if (p.batch > 0x7fffffff) return cudaErrorInvalidValue;
  const size_t smem = onlstm_shared_bytes(p.hidden, p.chunk, elem, backward);
  if (smem > 48 * 1024) {  // above the default, opt in (Ampere/Hopper allow up to ~227 KB)
    const cudaError_t err = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<dim3(static_cast<unsigned>(p.batch)), dim3(threads_for(p.hidden)), smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_onlstm_cell_forward(const OnlstmCellParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::Float32:
      return launch_rows(cell_forward_kernel<float>, p, sizeof(float), false, stream);
    case DType::Float64:
      return launch_rows(cell_forward_kernel<double>, p, sizeof(double), false, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t launch_onlstm_cell_backward(const OnlstmCellBackwardParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::Float32:
      return launch_rows(cell_backward_kernel<float>, p, sizeof(float), true, stream);
    case DType::Float64:
      return launch_rows(cell_backward_kernel<double>, p, sizeof(double), true, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace compressor
