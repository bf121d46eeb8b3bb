// Registers the CUDA cumax launchers with torch: checks, device guard, current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "compressor/checks.h"
#include "compressor/cuda_binding.h"
#include "compressor/cumax.h"

namespace {

using compressor::CumaxParams;

void check_input(const at::Tensor& t, const char* name) {
  CMP_CHECK(t.is_floating_point(), "cumax", name, " must be floating point, got ",
            t.scalar_type());
  CMP_CHECK_CONTIGUOUS(t, "cumax", name);
  CMP_CHECK(t.dim() >= 1, "cumax", name, " must have at least 1 dim");
}

CumaxParams make_params(const at::Tensor& x, const at::Tensor& out) {
  CumaxParams p{};
  p.x = x.data_ptr();
  p.out = out.data_ptr();
  p.len = x.size(-1);
  p.rows = p.len == 0 ? 0 : x.numel() / p.len;
  p.dtype = compressor::to_dtype(x, "cumax", "x");
  return p;
}

at::Tensor cumax_cuda(const at::Tensor& x) {
  check_input(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  auto y = at::empty_like(x);
  compressor::check_launch(
      compressor::launch_cumax_forward(make_params(x, y), c10::cuda::getCurrentCUDAStream()),
      "cumax");
  return y;
}

at::Tensor cumax_backward_cuda(const at::Tensor& grad, const at::Tensor& x) {
  check_input(x, "x");
  check_input(grad, "grad");
  CMP_CHECK(grad.sizes().equals(x.sizes()), "cumax_backward", "grad shape ", grad.sizes(),
            " must equal x shape ", x.sizes());
  CMP_CHECK_DTYPE(grad, x.scalar_type(), "cumax_backward", "grad");
  CMP_CHECK_DEVICE(grad, x.device(), "cumax_backward", "grad");
  const c10::cuda::CUDAGuard guard(x.device());
  auto dx = at::empty_like(x);
  CumaxParams p = make_params(x, dx);
  p.grad = grad.data_ptr();
  compressor::check_launch(
      compressor::launch_cumax_backward(p, c10::cuda::getCurrentCUDAStream()), "cumax_backward");
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(compressor, CUDA, m) {
  m.impl("cumax", &cumax_cuda);
  m.impl("cumax_backward", &cumax_backward_cuda);
}
