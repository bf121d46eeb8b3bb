// What both CPU paths of pow2_linear_int8 share (pow2_int8.cpp): the int8 weight of each code
// and the per-row quantization of the input, so the scalar and the VNNI path produce the same
// integers.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__BMI2__)
#define COMPRESSOR_POW2_VNNI 1
#endif

namespace compressor::pow2_int8 {

constexpr int64_t kBlk = 128;  // columns per block: 64 code bytes

// int8 weight of each code: m = 0 is zero, m in 1..7 is 2^(7 - m), bit 3 the sign.
constexpr int8_t kCodeInt[16] = {0, 64, 32, 16, 8, 4, 2, 1, 0, -64, -32, -16, -8, -4, -2, -1};

// The per-row quantization both paths share: scale = amax / 127 and q = rint(x * 127 / amax).
struct RowScale {
  float inv = 0.f, scale = 0.f;
  bool finite = true;
};

inline RowScale row_scale(const float* x, int64_t k) {
  float amax = 0.f;
  bool finite = true;
  for (int64_t i = 0; i < k; ++i) {
    const float a = std::fabs(x[i]);
    finite = finite && std::isfinite(a);
    amax = a > amax ? a : amax;
  }
  RowScale r;
  r.finite = finite;
  const float inv = 127.0f / amax;
  if (finite && std::isfinite(inv)) r.inv = inv, r.scale = amax / 127.0f;
  return r;
}

inline int32_t quantize(float x, float inv) {
  const float q = std::nearbyint(x * inv);  // round half to even, as torch.round
  return static_cast<int32_t>(std::min(127.f, std::max(-127.f, q)));
}

// y = acc * scale * 2^(n1 - 6) + bias, or NaN for a row that held NaN / inf.
inline void finish_row(const int32_t* acc, const RowScale& r, int n1, const float* bias,
                       int64_t n_out, float* y) {
  const float s = r.scale * std::ldexp(1.0f, n1 - 6);
  // One fused multiply-add, as the vector path does, so both give the same bits.
  for (int64_t n = 0; n < n_out; ++n)
    y[n] = r.finite ? std::fma(static_cast<float>(acc[n]), s, bias ? bias[n] : 0.f)
                    : std::numeric_limits<float>::quiet_NaN();
}

}  // namespace compressor::pow2_int8
