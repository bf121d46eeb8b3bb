// compressor::empty_output (kept_outputs.h): a c10::Allocator that keeps freed blocks by size.
#include "compressor/kept_outputs.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <mutex>
#include <unordered_map>
#include <vector>

namespace compressor {
namespace {

struct Block {
  void* ptr;
  size_t bytes;
};

class KeptAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) override {
    void* ptr = bytes >= kKeptMinBytes ? take(bytes) : nullptr;
    if (ptr == nullptr) ptr = c10::GetDefaultCPUAllocator()->raw_allocate(bytes);
    return {ptr, new Block{ptr, bytes}, &give_back, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, size_t count) const override {
    default_copy_data(dest, src, count);
  }

  size_t release() {
    std::vector<void*> freed;
    size_t bytes = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto& [size, ptrs] : idle_) freed.insert(freed.end(), ptrs.begin(), ptrs.end());
      idle_.clear();
      bytes = idle_bytes_;
      idle_bytes_ = 0;
    }
    for (void* ptr : freed) c10::GetDefaultCPUAllocator()->raw_deallocate(ptr);
    return bytes;
  }

 private:
  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = idle_.find(bytes);
    if (it == idle_.end() || it->second.empty()) return nullptr;
    void* ptr = it->second.back();
    it->second.pop_back();
    idle_bytes_ -= bytes;
    return ptr;
  }

  void keep(void* ptr, size_t bytes) {
    if (ptr != nullptr && bytes >= kKeptMinBytes) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (idle_bytes_ + bytes <= kKeptIdleBytes) {
        idle_[bytes].push_back(ptr);
        idle_bytes_ += bytes;
        return;
      }
    }
    c10::GetDefaultCPUAllocator()->raw_deallocate(ptr);
  }

  static void give_back(void* context);

  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> idle_;
  size_t idle_bytes_ = 0;
};

// Never destroyed: tensors (and their deleters) may outlive static destruction at exit.
KeptAllocator& kept() {
  static auto* allocator = new KeptAllocator();
  return *allocator;
}

void KeptAllocator::give_back(void* context) {
  const auto* block = static_cast<Block*>(context);
  kept().keep(block->ptr, block->bytes);
  delete block;
}

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return at::Tensor(at::detail::empty_generic(
      sizes, &kept(), c10::DispatchKeySet(c10::DispatchKey::CPU),
      c10::typeMetaToScalarType(options.dtype()), std::nullopt));
}

size_t release_kept_outputs() { return kept().release(); }

}  // namespace compressor
