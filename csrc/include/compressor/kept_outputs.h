// Output tensors of the CPU kernels from memory kept for reuse.
//
// A whole converted network allocates the same output sizes on every forward, and the large ones
// (a ResNet-50 activation at batch 1 is up to 3.2 MB) come from glibc as fresh mmap'd pages: the
// kernels' stores then fault every page in and the OS zeroes it (9.5% of the samples of a pruned
// ResNet-50 forward, batch 1, 2 threads, AMD EPYC, were in that path; with the blocks kept the
// kernel had 0.26% of them in all). Blocks freed by earlier outputs are kept, by exact byte size,
// and handed to the next output of that size.
#pragma once
#include <ATen/ATen.h>

#include <cstddef>

namespace compressor {

// Like at::empty(sizes, options) on the CPU (contiguous); memory of at least kKeptMinBytes
// comes from a kept block of the same size when one is idle. Idle blocks are capped at
// kKeptIdleBytes in all; past that a freed block goes back to the system.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);

constexpr size_t kKeptMinBytes = size_t{64} << 10;   // smaller ones: malloc's bins serve them
constexpr size_t kKeptIdleBytes = size_t{256} << 20;

// Returns every idle kept block to the system; the bytes released.
size_t release_kept_outputs();

}  // namespace compressor
