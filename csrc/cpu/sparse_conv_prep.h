// What the CPU sparse conv op shares with the fused bottleneck (sparse_block.cpp): the weight's
// per-geometry preparation (offsets into the layer's input, input-channel block starts; cached),
// the finiteness check, the activation names, and the conv op itself (the bottleneck's fallback).
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "compressor/sparse_cpu.h"

namespace compressor::sparse_cpu {

// Alignment classes a row is split into for these residues (none listed: one, the row as is).
inline int64_t class_count(const std::vector<int32_t>& shifts) {
  return std::max<int64_t>(1, static_cast<int64_t>(shifts.size()));
}

// With classes() > 1 (a layer whose offsets fall into 2 to 4 residues modulo kLanes, and rows
// long enough to split), each (row, block) segment is sorted into one run per residue
// (ConvArgs::shifts), each offset stored rounded down to a whole vector and value_index naming
// its value, so that the kernel loads whole vectors from an aligned input (channel_tiles).
struct Prepared {
  at::Tensor offsets;  // (nnz) each nonzero's offset into one group of the input's layout
  at::Tensor segs;     // (Cout, ncb * classes + 1) where each row's blocks (and classes) start
  int64_t uniform_length;  // ConvArgs::uniform_length
  int64_t ncb = 1;
  std::vector<int32_t> shifts;  // each class's residue, ascending (empty: one class)
  at::Tensor value_index;       // (nnz) with classes() > 1: which value each nonzero has
  int64_t classes() const { return class_count(shifts); }
};

// g with its phase rows widened to a whole number of vectors where that adds at most 1/8.
ConvGeom widened(ConvGeom g);

// Points `a` at what the kernel reads of `prep`.
void use_prepared(ConvArgs& a, const Prepared& prep);

// The weight's columns checked (errors name `op`) and turned into offsets for geometry g, kept
// between calls for the same tensors at the same versions (compressor::TensorCache).
std::shared_ptr<const Prepared> prepare_weight(const char* op, const at::Tensor& col_idx,
                                               const at::Tensor& row_ptr, const ConvGeom& g);

// True when x[0:n) holds no inf or NaN.
bool finite_run(const float* x, int64_t n);

// none, relu, relu6, silu; anything else is an error naming `op` and the argument `name`.
Act parse_activation(const char* op, const char* name, c10::string_view value);

at::Tensor sparse_conv2d_cpu(const at::Tensor& input, const at::Tensor& values,
                             const at::Tensor& col_idx, const at::Tensor& row_ptr,
                             const c10::optional<at::Tensor>& bias, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, int64_t groups,
                             const c10::optional<at::Tensor>& residual,
                             c10::string_view activation);

}  // namespace compressor::sparse_cpu
