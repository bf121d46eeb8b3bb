// Registers the CUDA sparse conv2d / linear launchers with torch: checks, device guard, stream.
//
// Shapes, dtypes, devices, contiguity and int32 ranges are checked on every call. The CSR content
// (row_ptr from 0 to nnz and non-decreasing, column entries in range, conv rows sorted without
// duplicates) is checked once per packed tensor and version (compressor::TensorCache): reading
// it back synchronises with the GPU. The kernels
// also stay in bounds for any content, so content changed behind the version counter (.data,
// raw pointers) or passed during CUDA graph capture gives defined results, never a bad read.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>

#include "compressor/checks.h"
#include "compressor/cuda_binding.h"
#include "compressor/sparse_cuda.h"
#include "compressor/tensor_cache.h"

namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

void check_input(const at::Tensor& input, int64_t dims, const char* op) {
  CMP_CHECK(input.is_cuda(), op, "input must be a CUDA tensor, got ", input.device());
  CMP_CHECK_DIM(input, dims, op, "input");
  const auto dtype = input.scalar_type();
  CMP_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, op,
            "input must be float32, float16 or bfloat16, got ", dtype);
  CMP_CHECK_CONTIGUOUS(input, op, "input");
}

// values / column entries / row_ptr / bias: dtypes, devices, lengths. Returns the row count.
int64_t check_csr(const at::Tensor& input, const at::Tensor& values, const at::Tensor& cols,
                  const char* cols_name, const at::Tensor& row_ptr,
                  const std::optional<at::Tensor>& bias, const char* op) {
  CMP_CHECK_DTYPE(values, at::kFloat, op, "values");
  CMP_CHECK_DTYPE(cols, at::kInt, op, cols_name);
  CMP_CHECK_DTYPE(row_ptr, at::kInt, op, "row_ptr");
  CMP_CHECK_DIM(values, 1, op, "values");
  CMP_CHECK_DIM(cols, 1, op, cols_name);
  CMP_CHECK_DIM(row_ptr, 1, op, "row_ptr");
  CMP_CHECK(cols.numel() == values.numel(), op, cols_name, " has ", cols.numel(),
            " entries but values has ", values.numel());
  CMP_CHECK(values.numel() <= kInt32Max, op, "values has ", values.numel(),
            " nonzeros; int32 row_ptr addresses at most 2^31-1");
  CMP_CHECK(row_ptr.numel() >= 1, op, "row_ptr must have rows + 1 >= 1 entries");
  const int64_t rows = row_ptr.numel() - 1;
  const auto same_device_contiguous = [&](const at::Tensor& t, const char* name) {
    CMP_CHECK_DEVICE(t, input.device(), op, name);
    CMP_CHECK_CONTIGUOUS(t, op, name);
  };
  same_device_contiguous(values, "values");
  same_device_contiguous(cols, cols_name);
  same_device_contiguous(row_ptr, "row_ptr");
  if (bias.has_value()) {
    CMP_CHECK_DTYPE(*bias, at::kFloat, op, "bias");
    CMP_CHECK(bias->dim() == 1 && bias->numel() == rows, op, "bias must have shape (", rows,
              "), got ", bias->sizes());
    CMP_CHECK_DEVICE(*bias, input.device(), op, "bias");
    CMP_CHECK_CONTIGUOUS(*bias, op, "bias");
  }
  return rows;
}

// Whether each row's columns strictly increase (sorted, no duplicates), as a device bool tensor.
at::Tensor rows_sorted(const at::Tensor& cols, const at::Tensor& rp) {
  const int64_t nnz = cols.numel();
  if (nnz < 2) return at::ones({}, cols.options().dtype(at::kBool));
  auto row_start = at::zeros({nnz}, cols.options().dtype(at::kBool));
  row_start.index_fill_(0, rp.slice(0, 0, -1).clamp(0, nnz - 1), true);
  const auto c = cols.to(at::kLong);
  const auto rises = c.slice(0, 1) > c.slice(0, 0, -1);
  return (rises | row_start.slice(0, 1)).all();
}

// row_ptr runs from 0 to nnz without decreasing, every column entry is in [0, bound) and, with
// `sorted`, columns strictly increase within each row.
void check_content_once(const at::Tensor& cols, const at::Tensor& row_ptr, int64_t bound,
                        const char* op, const char* cols_name, const char* hint,
                        bool sorted = false) {
  // Which (column tensor, row_ptr tensor, versions, bound) have had their content checked.
  static compressor::TensorCache<bool> cache;
  if (c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None ||
      cache.find(cols, row_ptr, {bound}))
    return;  // a graph capture cannot synchronise; the kernels stay in bounds regardless
  const int64_t nnz = cols.numel();
  const auto rp = row_ptr.to(at::kLong);
  const auto zero = at::zeros({}, rp.options());
  const auto steps = rp.numel() > 1 ? (rp.slice(0, 1) - rp.slice(0, 0, -1)).min() : zero;
  const auto lo = nnz > 0 ? cols.min().to(at::kLong) : zero;
  const auto hi = nnz > 0 ? cols.max().to(at::kLong) : zero;
  const auto order = sorted ? rows_sorted(cols, rp).to(at::kLong) : at::ones({}, rp.options());
  const auto host = at::stack({rp[0], rp[-1], steps, lo, hi, order}).cpu();
  const int64_t* h = host.data_ptr<int64_t>();
  CMP_CHECK(h[0] == 0 && h[1] == nnz, op, "row_ptr must run from 0 to nnz=", nnz, ", got ",
            h[0], " to ", h[1]);
  CMP_CHECK(h[2] >= 0, op, "row_ptr must be non-decreasing");
  CMP_CHECK(nnz == 0 || (h[3] >= 0 && h[4] < bound), op, cols_name, " entries must be in [0, ", bound,
            "), got [", h[3], ", ", h[4], "]", hint);
  CMP_CHECK(h[5] == 1, op, cols_name, " must strictly increase within a row (sorted, no "
            "duplicates)");
  cache.add(cols, row_ptr, {bound}, std::make_shared<const bool>(true));
}

void check_pair(at::IntArrayRef v, const char* name, int64_t min, const char* op) {
  CMP_CHECK(v.size() == 2, op, name, " must have 2 entries, got ", v.size());
  CMP_CHECK(v[0] >= min && v[1] >= min && v[0] <= kInt32Max && v[1] <= kInt32Max, op, name,
            " entries must be in [", min, ", 2^31-1], got ", v);
}

const float* bias_ptr(const std::optional<at::Tensor>& bias) {
  return bias.has_value() ? bias->data_ptr<float>() : nullptr;
}

compressor::SparseConv2dParams conv_params(const at::Tensor& input, const at::Tensor& values,
                                           const at::Tensor& col_idx,
                                           const at::Tensor& row_ptr,
                                           const std::optional<at::Tensor>& bias) {
  compressor::SparseConv2dParams p{};
  p.input = input.data_ptr();
  p.values = values.data_ptr<float>();
  p.col_idx = col_idx.data_ptr<int32_t>();
  p.row_ptr = row_ptr.data_ptr<int32_t>();
  p.bias = bias_ptr(bias);
  p.nnz = values.numel();
  p.batch = input.size(0);
  p.in_channels = input.size(1);
  p.in_h = static_cast<int>(input.size(2));
  p.in_w = static_cast<int>(input.size(3));
  p.out_channels = row_ptr.numel() - 1;
  p.dtype = compressor::to_dtype(input, "sparse_conv2d", "input");
  return p;
}

void set_geometry(compressor::SparseConv2dParams& p, at::IntArrayRef k, at::IntArrayRef s,
                  at::IntArrayRef pad, at::IntArrayRef d, int64_t groups) {
  p.kernel_h = static_cast<int>(k[0]);
  p.kernel_w = static_cast<int>(k[1]);
  p.stride_h = static_cast<int>(s[0]);
  p.stride_w = static_cast<int>(s[1]);
  p.pad_h = static_cast<int>(pad[0]);
  p.pad_w = static_cast<int>(pad[1]);
  p.dil_h = static_cast<int>(d[0]);
  p.dil_w = static_cast<int>(d[1]);
  p.groups = groups;
}

// Output size as F.conv2d computes it; errors when the dilated kernel exceeds the padded input.
int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t pad, int64_t d, const char* what) {
  const int64_t span = d * (k - 1) + 1;
  CMP_CHECK(in + 2 * pad >= span, "sparse_conv2d", "kernel extent ", span, " exceeds the padded ",
            what, " ", in + 2 * pad);
  return (in + 2 * pad - span) / s + 1;
}

void check_conv_shapes(const at::Tensor& input, int64_t out_channels,
                       int64_t groups, at::IntArrayRef padding) {
  const char* op = "sparse_conv2d";
  CMP_CHECK(groups >= 1, op, "groups must be >= 1, got ", groups);
  CMP_CHECK(input.size(1) % groups == 0, op, "input has ", input.size(1),
            " channels, not divisible by groups=", groups);
  CMP_CHECK(out_channels % groups == 0, op, "row_ptr gives ", out_channels,
            " output channels, not divisible by groups=", groups);
  const int64_t hp = input.size(2) + 2 * padding[0], wp = input.size(3) + 2 * padding[1];
  const int64_t plane = hp <= kInt32Max && wp <= kInt32Max ? hp * wp : kInt32Max + 1;
  CMP_CHECK(plane <= kInt32Max && input.size(1) / groups <= kInt32Max / std::max<int64_t>(plane, 1),
            op, "input too large for int32 indexing: channels/groups=", input.size(1) / groups,
            ", padded plane Hp*Wp=", hp, "*", wp);
}

int activation_code(c10::string_view name) {
  if (name == "none") return 0;
  if (name == "relu") return 1;
  if (name == "relu6") return 2;
  if (name == "silu") return 3;
  TORCH_CHECK(false, "sparse_conv2d: activation must be one of none, relu, relu6, silu, got '",
              std::string(name), "'");
}

void check_residual(const std::optional<at::Tensor>& residual, const at::Tensor& out) {
  if (!residual.has_value()) return;
  const char* op = "sparse_conv2d";
  CMP_CHECK_DEVICE(*residual, out.device(), op, "residual");
  CMP_CHECK(residual->scalar_type() == out.scalar_type(), op, "residual must be ",
            out.scalar_type(), " like the input, got ", residual->scalar_type());
  CMP_CHECK_CONTIGUOUS(*residual, op, "residual");
  CMP_CHECK(residual->sizes() == out.sizes(), op, "residual must have the output's shape ",
            out.sizes(), ", got ", residual->sizes());
}

at::Tensor sparse_conv2d_cuda(const at::Tensor& input, const at::Tensor& values,
                              const at::Tensor& col_idx, const at::Tensor& row_ptr,
                              const std::optional<at::Tensor>& bias, at::IntArrayRef kernel_size,
                              at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, int64_t groups,
                              const std::optional<at::Tensor>& residual,
                              c10::string_view activation) {
  const char* op = "sparse_conv2d";
  check_input(input, 4, op);
  const int act = activation_code(activation);
  const int64_t out_channels = check_csr(input, values, col_idx, "col_idx", row_ptr, bias, op);
  check_pair(kernel_size, "kernel_size", 1, op);
  check_pair(stride, "stride", 1, op);
  check_pair(padding, "padding", 0, op);
  check_pair(dilation, "dilation", 1, op);
  check_conv_shapes(input, out_channels, groups, padding);
  const int64_t out_h = out_size(input.size(2), kernel_size[0], stride[0], padding[0],
                                 dilation[0], "height");
  const int64_t out_w = out_size(input.size(3), kernel_size[1], stride[1], padding[1],
                                 dilation[1], "width");
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t ncols = input.size(1) / groups * kernel_size[0] * kernel_size[1];
  CMP_CHECK(ncols <= kInt32Max, op, "Cin/groups*kh*kw = ", ncols, " exceeds int32 columns");
  check_content_once(col_idx, row_ptr, ncols, op, "col_idx",
                     " (Cin/groups*kh*kw): was the weight packed for this layer?", true);
  auto out = at::empty({input.size(0), out_channels, out_h, out_w}, input.options());
  check_residual(residual, out);
  // One int the launcher sets when the input holds inf or NaN (no host sync needed).
  auto flag = at::empty({1}, input.options().dtype(at::kInt));
  compressor::SparseConv2dParams p = conv_params(input, values, col_idx, row_ptr, bias);
  set_geometry(p, kernel_size, stride, padding, dilation, groups);
  p.out_h = static_cast<int>(out_h);
  p.out_w = static_cast<int>(out_w);
  p.output = out.data_ptr();
  p.residual = residual.has_value() ? residual->data_ptr() : nullptr;
  p.activation = act;
  p.nonfinite = flag.data_ptr<int>();
  compressor::check_launch(
      compressor::launch_sparse_conv2d(p, c10::cuda::getCurrentCUDAStream()), op);
  return out;
}

at::Tensor sparse_linear_cuda(const at::Tensor& input, const at::Tensor& values,
                              const at::Tensor& col_idx, const at::Tensor& row_ptr,
                              const std::optional<at::Tensor>& bias) {
  const char* op = "sparse_linear";
  check_input(input, 2, op);
  const int64_t out_features = check_csr(input, values, col_idx, "col_idx", row_ptr, bias, op);
  const c10::cuda::CUDAGuard guard(input.device());
  check_content_once(col_idx, row_ptr, input.size(1), op, "col_idx", " (in_features)");
  auto out = at::empty({input.size(0), out_features}, input.options());
  compressor::SparseLinearParams p{};
  p.input = input.data_ptr();
  p.values = values.data_ptr<float>();
  p.col_idx = col_idx.data_ptr<int32_t>();
  p.row_ptr = row_ptr.data_ptr<int32_t>();
  p.bias = bias_ptr(bias);
  p.output = out.data_ptr();
  p.nnz = values.numel();
  p.rows = input.size(0);
  p.in_features = input.size(1);
  p.out_features = out_features;
  p.dtype = compressor::to_dtype(input, op, "input");
  compressor::check_launch(
      compressor::launch_sparse_linear(p, c10::cuda::getCurrentCUDAStream()), op);
  // NaN / inf in an input row reach every output of that row in F.linear (the pruned zeros
  // multiply them too); the kernel only reads the kept columns, so such rows are set here.
  if (input.numel() > 0 && out.numel() > 0)
    out.masked_fill_(input.isfinite().logical_not().any(1, /*keepdim=*/true),
                     std::numeric_limits<float>::quiet_NaN());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(compressor, CUDA, m) {
  m.impl("sparse_conv2d", &sparse_conv2d_cuda);
  m.impl("sparse_linear", &sparse_linear_cuda);
}
