// ON-LSTM cell on one batch row (CPU). The master gates are short scans done once per row; the
// D-wide part is one flat loop the compiler vectorises, so exp is a polynomial (Cephes expf,
// about 1 ulp) rather than a libm call that would keep the loop scalar. The including file must
// set -fno-trapping-math (see onlstm.cpp) or GCC will not vectorise the selects and rounding.
#pragma once
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

namespace compressor::onlstm_cpu {

inline float vexp(float x) {
  x = x < -87.3f ? -87.3f : x;  // builtins and selects only: std:: calls would not inline here
  x = x > 88.3f ? 88.3f : x;
  const float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  x = x - n * 0.693359375f + n * 2.12194440e-4f;
  const float z = x * x;
  float y = 1.9875691500e-4f;
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * z + x + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return y * std::bit_cast<float>(bits);
}
inline double vexp(double x) { return __builtin_exp(x); }

template <typename T> inline T sigm(T x) { return T(1) / (T(1) + vexp(-x)); }
template <typename T> inline T vtanh(T x) { return T(1) - T(2) / (vexp(T(2) * x) + T(1)); }
inline double vtanh(double x) { return __builtin_tanh(x); }

// Shapes of one row: hidden D, chunk C, m = D / C masters, G = 2m + 4D gate columns.
struct Dims {
  int64_t D, C, m, G;
  Dims(int64_t hidden, int64_t chunk)
      : D(hidden), C(chunk), m(hidden / chunk), G(4 * hidden + 2 * (hidden / chunk)) {}
};

// Per-thread work space, reused across the rows a thread handles.
template <typename T>
struct Scratch {
  std::vector<T> gsum, s_in, s_fg, fmD, imD, dfmD, dimD, gfm, gim;
  explicit Scratch(const Dims& d)
      : gsum(d.G), s_in(d.m), s_fg(d.m), fmD(d.D), imD(d.D), dfmD(d.D), dimD(d.D), gfm(d.m),
        gim(d.m) {}
};

// softmax of x (len) into s; a row holding NaN or +inf becomes NaN as in torch.softmax.
template <typename T>
void softmax(const T* x, T* s, int64_t len) {
  T mx = -INFINITY;
  for (int64_t j = 0; j < len; ++j) mx = (x[j] != x[j] || x[j] > mx) ? x[j] : mx;
  T sum = 0;
  for (int64_t j = 0; j < len; ++j) sum += (s[j] = std::exp(x[j] - mx));
  const T inv = T(1) / sum;
  for (int64_t j = 0; j < len; ++j) s[j] *= inv;
}

// Master gates from logits g[0:2m]: f~ = cumax and i~ = 1 - cumax, each spread over its chunk
// (fmD, imD of width D), softmaxes kept for the backward, and dist = [1 - mean f~, mean i~].
template <typename T>
void master_gates(const T* g, const Dims& d, Scratch<T>& s, T* dist) {
  softmax(g, s.s_in.data(), d.m);
  softmax(g + d.m, s.s_fg.data(), d.m);
  T cin = 0, cfg = 0, sum_im = 0, sum_fm = 0;
  for (int64_t k = 0; k < d.m; ++k) {
    cin += s.s_in[k];
    cfg += s.s_fg[k];
    const T im = T(1) - cin, fm = cfg;
    sum_im += im;
    sum_fm += fm;
    std::fill_n(s.imD.data() + k * d.C, d.C, im);
    std::fill_n(s.fmD.data() + k * d.C, d.C, fm);
  }
  if (dist) {
    dist[0] = T(1) - sum_fm / T(d.m);
    dist[1] = sum_im / T(d.m);
  }
}

// Forward of one row from summed pre-activations g. With kAct, o | c | i | f of `act` receive
// their activated values (the sequence op's saved state; act may alias g).
template <typename T, bool kAct>
void forward_row(const T* g, const T* cp, T* h, T* c, T* dist, T* act, const Dims& d,
                 Scratch<T>& s) {
  master_gates(g, d, s, dist);
  const T* go = g + 2 * d.m;
  const T* gc = go + d.D;
  const T* gi = gc + d.D;
  const T* gf = gi + d.D;
  T* ao = act + 2 * d.m;
  const T* fmD = s.fmD.data();
  const T* imD = s.imD.data();
  const int64_t D = d.D;  // a local, so the loop bound is not reloaded after each store
#pragma omp simd
  for (int64_t j = 0; j < D; ++j) {
    const T so = sigm(go[j]), tc = vtanh(gc[j]), si = sigm(gi[j]), sf = sigm(gf[j]);
    const T w = fmD[j] * imD[j];
    const T fh = sf * w + (fmD[j] - w), ih = si * w + (imD[j] - w);
    const T cy = fh * cp[j] + ih * tc;
    c[j] = cy;
    h[j] = so * vtanh(cy);
    if constexpr (kAct) {
      ao[j] = so;
      ao[D + j] = tc;
      ao[2 * D + j] = si;
      ao[3 * D + j] = sf;
    }
  }
}

// dL/dx of y = cumax(x) given dL/dy in `gy` and s = softmax(x): s * (r - <s, r>), r = rev cumsum.
template <typename T>
void cumax_grad(const T* gy, const T* s, T* dx, int64_t len) {
  T acc = 0, dot = 0;
  for (int64_t k = len - 1; k >= 0; --k) {
    acc += gy[k];
    dx[k] = acc;
    dot += s[k] * acc;
  }
  for (int64_t k = 0; k < len; ++k) dx[k] = s[k] * (dx[k] - dot);
}

// Backward of one row. `a` holds master logits then o | c | i | f, activated when kActivated
// (sequence op) or as pre-activations (cell op). Writes dgates (G) and dcp (D).
template <typename T, bool kActivated>
void backward_row(const T* gh, const T* gcin, const T* gdist, const T* a, const T* cp,
                  const T* cy, T* dgates, T* dcp, const Dims& d, Scratch<T>& s) {
  master_gates(a, d, s, static_cast<T*>(nullptr));
  const T* ao = a + 2 * d.m;
  T* dgo = dgates + 2 * d.m;
  const T* fmD = s.fmD.data();
  const T* imD = s.imD.data();
  T* dfmD = s.dfmD.data();
  T* dimD = s.dimD.data();
  const int64_t D = d.D;
#pragma omp simd
  for (int64_t j = 0; j < D; ++j) {
    T so = ao[j], tg = ao[D + j], si = ao[2 * D + j], sf = ao[3 * D + j];
    if constexpr (!kActivated) {
      so = sigm(so);
      tg = vtanh(tg);
      si = sigm(si);
      sf = sigm(sf);
    }
    const T tc = vtanh(cy[j]);
    const T dct = gcin[j] + gh[j] * so * (T(1) - tc * tc);
    const T w = fmD[j] * imD[j];
    const T fh = sf * w + (fmD[j] - w), ih = si * w + (imD[j] - w);
    const T dfh = dct * cp[j], dih = dct * tg;
    dgo[j] = gh[j] * tc * so * (T(1) - so);
    dgo[D + j] = dct * ih * (T(1) - tg * tg);
    dgo[2 * D + j] = dih * w * si * (T(1) - si);
    dgo[3 * D + j] = dfh * w * sf * (T(1) - sf);
    dcp[j] = dct * fh;
    const T dw = dfh * (sf - T(1)) + dih * (si - T(1));
    dfmD[j] = dfh + dw * imD[j];
    dimD[j] = dih + dw * fmD[j];
  }
  // Chunk sums, the distance terms, then the cumax backward of both masters (i~ = 1 - cumax).
  const T inv_m = T(1) / T(d.m);
  for (int64_t k = 0; k < d.m; ++k) {
    T sf = 0, si = 0;
    for (int64_t j = k * d.C; j < (k + 1) * d.C; ++j) {
      sf += dfmD[j];
      si += dimD[j];
    }
    s.gfm[k] = sf - gdist[0] * inv_m;
    s.gim[k] = -(si + gdist[1] * inv_m);
  }
  cumax_grad(s.gim.data(), s.s_in.data(), dgates, d.m);
  cumax_grad(s.gfm.data(), s.s_fg.data(), dgates + d.m, d.m);
}

}  // namespace compressor::onlstm_cpu
