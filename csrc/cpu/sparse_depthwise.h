// The direct path of compressor::sparse_conv2d for depthwise convs (one input channel per group,
// groups > 1: MobileNet's 3x3s). Each output plane is filled with its bias, then each nonzero tap
// adds, row by row (or in one run where whole rows line up), the shifted slice of its one input
// plane that it reaches, read in place; one epilogue over the plane ends it. No padded or
// phase-split copy of the input: at MobileNetV2's 90% a depthwise channel keeps about one of its
// nine taps, so that copy was most of such a call.
#pragma once
#include <cstdint>

#include "compressor/sparse_cpu.h"

namespace compressor::sparse_cpu {

inline bool depthwise_fits(const ConvGeom& g) { return g.groups > 1 && g.cin_g == 1; }

// out (N, Cout, Ho, Wo) = act(conv(x) + bias + residual) for a geometry depthwise_fits takes,
// with col_idx already checked (each < kh * kw). False, out unspecified, when x holds inf or
// NaN: the caller then runs the dense convolution, in which pruned zeros turn those into NaN.
bool depthwise_forward(const ConvGeom& g, const float* x, const float* values,
                       const int32_t* col_idx, const int32_t* row_ptr, const float* bias,
                       const float* residual, Act act, float* out);

}  // namespace compressor::sparse_cpu
