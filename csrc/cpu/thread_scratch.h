// Per-thread scratch floats for one call of a CPU kernel (the sparse conv's padded input, the
// fused bottleneck's slab and band buffers, a tile's accumulators, a max-pool's padded row).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

namespace compressor {

// `floats` floats, uninitialised beyond what earlier calls left there. Up to `keep_limit` they
// are `keep` (the caller's thread_local buffer, grown as needed and kept between calls): a fresh
// multi-MB allocation comes back from the OS as untouched pages, and their faults cost more than
// a whole convolution at high sparsity (measured 0.6 ms of VGG-16 conv4_2's 0.7 ms at 100%
// sparsity). Past the limit the floats are a buffer of this object's own, freed with it, so one
// huge layer leaves no huge buffer behind in every thread.
class ThreadScratch {
 public:
  // The floats start on 64 bytes, so that the sparse kernels' whole-vector loads are aligned.
  ThreadScratch(std::vector<float>& keep, int64_t floats, int64_t keep_limit) {
    const size_t room = static_cast<size_t>(floats) + kAlignFloats;
    if (floats > keep_limit) {
      own_.reset(new float[room]);  // no zeroing: every use writes first
      data_ = aligned(own_.get());
      return;
    }
    if (keep.size() < room) keep.resize(room);
    data_ = aligned(keep.data());
  }
  float* data() const { return data_; }

 private:
  static constexpr size_t kAlignFloats = 64 / sizeof(float);
  static float* aligned(float* p) {
    return reinterpret_cast<float*>((reinterpret_cast<std::uintptr_t>(p) + 63) & ~std::uintptr_t{63});
  }
  std::unique_ptr<float[]> own_;
  float* data_ = nullptr;
};

}  // namespace compressor
