// cumax on CPU: one pass per row for max and sum, one for the scaled prefix sum.
// Rows are independent, so they are split across torch's intra-op threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "compressor/checks.h"

namespace {

// Softmax of one row into `s`. A NaN or +inf anywhere makes the whole row NaN, as in torch.softmax.
template <typename T>
void row_softmax(const T* x, T* s, int64_t len) {
  T mx = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < len; ++j) mx = std::max(mx, x[j]);
  T sum = 0;
  for (int64_t j = 0; j < len; ++j) {
    s[j] = std::exp(x[j] - mx);
    sum += s[j];
  }
  const T inv = T(1) / sum;
  for (int64_t j = 0; j < len; ++j) s[j] *= inv;
}

template <typename T>
void cumax_rows(const T* x, T* y, int64_t rows, int64_t len) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      T* yr = y + r * len;
      row_softmax(x + r * len, yr, len);
      T acc = 0;
      for (int64_t j = 0; j < len; ++j) {
        acc += yr[j];
        yr[j] = acc;
      }
    }
  });
}

// dL/dx = s * (r - <s, r>) with r the reverse cumulative sum of dL/dy.
template <typename T>
void cumax_backward_rows(const T* g, const T* x, T* dx, int64_t rows, int64_t len) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<T> s(len);
    for (int64_t r = begin; r < end; ++r) {
      const T* gr = g + r * len;
      T* dxr = dx + r * len;
      row_softmax(x + r * len, s.data(), len);
      T acc = 0, dot = 0;
      for (int64_t j = len - 1; j >= 0; --j) {
        acc += gr[j];
        dxr[j] = acc;  // r_j, kept in the output until the dot product is known
        dot += s[j] * acc;
      }
      for (int64_t j = 0; j < len; ++j) dxr[j] = s[j] * (dxr[j] - dot);
    }
  });
}

void check_cumax_input(const at::Tensor& t, const char* name) {
  CMP_CHECK_FLOATING(t, "cumax", name);
  CMP_CHECK_CONTIGUOUS(t, "cumax", name);
  CMP_CHECK(t.dim() >= 1, "cumax", name, " must have at least 1 dim");
}

at::Tensor cumax_cpu(const at::Tensor& x) {
  check_cumax_input(x, "x");
  auto y = at::empty_like(x);
  const int64_t len = x.size(-1);
  if (x.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cumax_cpu", [&] {
    cumax_rows(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), x.numel() / len, len);
  });
  return y;
}

at::Tensor cumax_backward_cpu(const at::Tensor& grad, const at::Tensor& x) {
  check_cumax_input(x, "x");
  check_cumax_input(grad, "grad");
  CMP_CHECK(grad.sizes().equals(x.sizes()), "cumax_backward", "grad shape ", grad.sizes(),
            " must equal x shape ", x.sizes());
  CMP_CHECK_DTYPE(grad, x.scalar_type(), "cumax_backward", "grad");
  auto dx = at::empty_like(x);
  const int64_t len = x.size(-1);
  if (x.numel() == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cumax_backward_cpu", [&] {
    cumax_backward_rows(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                        dx.data_ptr<scalar_t>(), x.numel() / len, len);
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(compressor, CPU, m) {
  m.impl("cumax", &cumax_cpu);
  m.impl("cumax_backward", &cumax_backward_cpu);
}
