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
  ThreadScratch(std::vector<float>& keep, int64_t floats, int64_t keep_limit) {
    if (floats > keep_limit) {
      own_.reset(new float[static_cast<size_t>(floats)]);  // no zeroing: every use writes first
      data_ = own_.get();
      return;
    }
    if (keep.size() < static_cast<size_t>(floats)) keep.resize(static_cast<size_t>(floats));
    data_ = keep.data();
  }
  float* data() const { return data_; }

 private:
  std::unique_ptr<float[]> own_;
  float* data_ = nullptr;
};

}  // namespace compressor
