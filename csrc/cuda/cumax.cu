// cumax on CUDA: one warp per row. Pass 1 reduces max and sum of exp across the warp; pass 2 walks
// the row in 32-wide tiles with a warp inclusive scan and a running carry. Backward does the same
// with a reverse scan of the incoming gradient and a warp dot product.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "compressor/cumax.h"

namespace compressor {
namespace {

constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 8;

template <typename T>
__device__ __forceinline__ float load_f(const T* p) { return static_cast<float>(*p); }
__device__ __forceinline__ double load_f(const double* p) { return *p; }
__device__ __forceinline__ float load_f(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float load_f(const __nv_bfloat16* p) { return __bfloat162float(*p); }

template <typename T, typename A>
__device__ __forceinline__ void store_f(T* p, A v) { *p = static_cast<T>(v); }
__device__ __forceinline__ void store_f(__half* p, float v) { *p = __float2half(v); }
__device__ __forceinline__ void store_f(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }

// Accumulate in float for half types, in the input type otherwise.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename A>
__device__ __forceinline__ A warp_max(A v) {
  for (int o = kWarp / 2; o > 0; o /= 2) {
    A other = __shfl_xor_sync(0xffffffffu, v, o);
    // fmax would drop NaN; keep it so the row turns NaN as in torch.softmax
    v = (other != other || other > v) ? other : v;
  }
  return v;
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Inclusive prefix sum over lanes (forward) or suffix sum (reverse).
template <bool kReverse, typename A>
__device__ __forceinline__ A warp_scan(A v, int lane) {
  for (int o = 1; o < kWarp; o *= 2) {
    A other = kReverse ? __shfl_down_sync(0xffffffffu, v, o) : __shfl_up_sync(0xffffffffu, v, o);
    if (kReverse ? lane + o < kWarp : lane >= o) v += other;
  }
  return v;
}

template <typename T, typename A>
__device__ void row_max_sum(const T* x, int64_t len, int lane, A& mx, A& sum) {
  mx = -INFINITY;
  for (int64_t j = lane; j < len; j += kWarp) {
    A v = load_f(x + j);
    mx = (v != v || v > mx) ? v : mx;
  }
  mx = warp_max(mx);
  sum = 0;
  for (int64_t j = lane; j < len; j += kWarp) sum += exp(load_f(x + j) - mx);
  sum = warp_sum(sum);
}

template <typename T>
__global__ void cumax_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows,
                                     int64_t len) {
  using A = typename Acc<T>::type;
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= rows) return;
  const T* xr = x + row * len;
  T* yr = y + row * len;
  A mx, sum;
  row_max_sum(xr, len, lane, mx, sum);
  const A inv = A(1) / sum;
  A carry = 0;
  for (int64_t base = 0; base < len; base += kWarp) {
    const int64_t j = base + lane;
    A s = j < len ? exp(load_f(xr + j) - mx) * inv : A(0);
    s = warp_scan<false>(s, lane) + carry;
    if (j < len) store_f(yr + j, s);
    carry = __shfl_sync(0xffffffffu, s, kWarp - 1);
  }
}

template <typename T>
__global__ void cumax_backward_kernel(const T* __restrict__ g, const T* __restrict__ x,
                                      T* __restrict__ dx, int64_t rows, int64_t len) {
  using A = typename Acc<T>::type;
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= rows) return;
  const T* xr = x + row * len;
  const T* gr = g + row * len;
  T* dxr = dx + row * len;
  A mx, sum;
  row_max_sum(xr, len, lane, mx, sum);
  const A inv = A(1) / sum;
  // Pass 1: r = reverse cumsum(g), stored in dx for now, and <s, r>.
  const int64_t last_tile = ((len - 1) / kWarp) * kWarp;
  A carry = 0, dot = 0;
  for (int64_t base = last_tile; base >= 0; base -= kWarp) {
    const int64_t j = base + lane;
    A r = j < len ? load_f(gr + j) : A(0);
    r = warp_scan<true>(r, lane) + carry;
    if (j < len) {
      dot += exp(load_f(xr + j) - mx) * inv * r;
      store_f(dxr + j, r);
    }
    carry = __shfl_sync(0xffffffffu, r, 0);
  }
  dot = warp_sum(dot);
  // Pass 2: dx = s * (r - <s, r>). Each lane reads back only what it wrote itself.
  for (int64_t j = lane; j < len; j += kWarp) {
    const A s = exp(load_f(xr + j) - mx) * inv;
    store_f(dxr + j, s * (load_f(dxr + j) - dot));
  }
}

template <typename T>
cudaError_t launch_typed(const CumaxParams& p, cudaStream_t stream, bool backward) {
  if (p.rows == 0 || p.len == 0) return cudaSuccess;
  const int64_t blocks = (p.rows + kRowsPerBlock - 1) / kRowsPerBlock;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(blocks)), block(kWarp * kRowsPerBlock);
  if (backward) {
    cumax_backward_kernel<T><<<grid, block, 0, stream>>>(
        static_cast<const T*>(p.grad), static_cast<const T*>(p.x), static_cast<T*>(p.out),
        p.rows, p.len);
  } else {
    cumax_forward_kernel<T><<<grid, block, 0, stream>>>(static_cast<const T*>(p.x),
                                                        static_cast<T*>(p.out), p.rows, p.len);
  }
  return cudaGetLastError();
}

cudaError_t launch(const CumaxParams& p, cudaStream_t stream, bool backward) {
  switch (p.dtype) {
    case DType::Float32: return launch_typed<float>(p, stream, backward);
    case DType::Float64: return launch_typed<double>(p, stream, backward);
    case DType::Float16: return launch_typed<__half>(p, stream, backward);
    case DType::BFloat16: return launch_typed<__nv_bfloat16>(p, stream, backward);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_cumax_forward(const CumaxParams& p, cudaStream_t stream) {
  return launch(p, stream, false);
}

cudaError_t launch_cumax_backward(const CumaxParams& p, cudaStream_t stream) {
  return launch(p, stream, true);
}

}  // namespace compressor
