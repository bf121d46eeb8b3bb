// Registers the CUDA pow2_linear launcher with torch: checks, device guard, current stream.
// Format and contract: the pow2 block of csrc/ops.cpp.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

#include "compressor/checks.h"
#include "compressor/cuda_binding.h"
#include "compressor/pow2_checks.h"
#include "compressor/pow2_cuda.h"

namespace {

constexpr const char* kOp = "pow2_linear";

void check_input(const at::Tensor& input, int64_t in_features) {
  CMP_CHECK(input.is_cuda(), kOp, "input must be a CUDA tensor, got ", input.device());
  const auto t = input.scalar_type();
  CMP_CHECK(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16, kOp,
            "input must be float32, float64, float16 or bfloat16, got ", t);
  CMP_CHECK_DIM(input, 2, kOp, "input");
  CMP_CHECK(input.size(1) == in_features, kOp, "input has ", input.size(1),
            " columns but in_features is ", in_features);
  CMP_CHECK_CONTIGUOUS(input, kOp, "input");
}

// A packed uint8 tensor of exactly `cols` bytes per row on the input's device.
void check_packed(const at::Tensor& t, const char* name, const at::Device& device, int64_t rows,
                  int64_t cols) {
  CMP_CHECK_DEVICE(t, device, kOp, name);
  CMP_CHECK_DTYPE(t, at::kByte, kOp, name);
  CMP_CHECK_DIM(t, 2, kOp, name);
  CMP_CHECK(t.size(0) == rows && t.size(1) == cols, kOp, name, " must have shape (", rows, ", ",
            cols, "), got ", t.sizes());
  CMP_CHECK_CONTIGUOUS(t, kOp, name);
}

// The kernel reads codes and the bitmap as 4-byte words; an offset view gets an aligned copy.
at::Tensor word_aligned(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 4 == 0 ? t : t.clone();
}

at::Tensor pow2_linear_cuda(const at::Tensor& input, const at::Tensor& codes,
                            const at::Tensor& nonzero, const std::optional<at::Tensor>& bias,
                            int64_t in_features, int64_t bits, int64_t n1) {
  compressor::check_pow2_format(kOp, bits, n1, in_features);
  check_input(input, in_features);
  const int64_t k_pad = (in_features + 7) / 8 * 8;
  CMP_CHECK_DIM(codes, 2, kOp, "codes");
  const int64_t n_out = codes.size(0);
  check_packed(codes, "codes", input.device(), n_out, k_pad / 2);
  if (bits == 5) {
    check_packed(nonzero, "nonzero", input.device(), n_out, k_pad / 8);
  } else {
    CMP_CHECK_DTYPE(nonzero, at::kByte, kOp, "nonzero");
    CMP_CHECK(nonzero.numel() == 0, kOp, "nonzero must be empty for bits=", bits,
              " (only 5-bit codes carry a bitmap), got shape ", nonzero.sizes());
  }
  at::Tensor bias_f;
  if (bias.has_value()) {
    CMP_CHECK_DEVICE(*bias, input.device(), kOp, "bias");
    CMP_CHECK(bias->is_floating_point(), kOp, "bias must be floating point, got ",
              bias->scalar_type());
    CMP_CHECK(bias->dim() == 1 && bias->size(0) == n_out, kOp, "bias must have shape (", n_out,
              "), got ", bias->sizes());
    bias_f = bias->to(at::kFloat).contiguous();
  }

  const c10::cuda::CUDAGuard guard(input.device());
  auto out = at::empty({input.size(0), n_out}, input.options());
  if (out.numel() == 0) return out;
  const at::Tensor codes_a = word_aligned(codes);
  const at::Tensor bitmap_a = bits == 5 ? word_aligned(nonzero) : at::Tensor();

  compressor::Pow2LinearParams p{};
  p.input = input.data_ptr();
  p.codes = codes_a.data_ptr<uint8_t>();
  p.nonzero = bits == 5 ? bitmap_a.data_ptr<uint8_t>() : nullptr;
  p.bias = bias_f.defined() ? bias_f.data_ptr<float>() : nullptr;
  p.out = out.data_ptr();
  p.M = input.size(0);
  p.N = n_out;
  p.K = in_features;
  p.bits = static_cast<int>(bits);
  p.n1 = static_cast<int>(n1);  // checked above: -119..127, the range the codes can be packed for
  p.dtype = compressor::to_dtype(input, kOp, "input");
  compressor::check_launch(
      compressor::launch_pow2_linear(p, c10::cuda::getCurrentCUDAStream()), kOp);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(compressor, CUDA, m) {
  m.impl("pow2_linear", &pow2_linear_cuda);
}
