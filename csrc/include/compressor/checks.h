// Input checks shared by every CPU kernel and by the thin CUDA registration layer.
// Each message names the op and the argument so a user sees at once what to fix.
#pragma once
#include <ATen/ATen.h>

#define CMP_CHECK(cond, op, ...) TORCH_CHECK((cond), op, ": ", __VA_ARGS__)

#define CMP_CHECK_DEVICE(t, dev, op, name)                                          \
  TORCH_CHECK((t).device() == (dev), op, ": ", name, " must be on ", (dev), ", got ", \
              (t).device())

#define CMP_CHECK_CONTIGUOUS(t, op, name) \
  TORCH_CHECK((t).is_contiguous(), op, ": ", name, " must be contiguous")

#define CMP_CHECK_DIM(t, n, op, name)                                                  \
  TORCH_CHECK((t).dim() == (n), op, ": ", name, " must have ", (n), " dims, got shape ", \
              (t).sizes())

#define CMP_CHECK_FLOATING(t, op, name)                                                  \
  TORCH_CHECK((t).scalar_type() == at::kFloat || (t).scalar_type() == at::kDouble, op, \
              ": ", name, " must be float32 or float64, got ", (t).scalar_type())

#define CMP_CHECK_DTYPE(t, dtype, op, name)                                        \
  TORCH_CHECK((t).scalar_type() == (dtype), op, ": ", name, " must be ", (dtype), \
              ", got ", (t).scalar_type())
