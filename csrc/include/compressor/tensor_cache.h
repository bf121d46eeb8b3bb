// Values derived from a pair of tensors (a packed weight's column and row_ptr tensors): the CPU
// conv's per-nonzero input offsets, the CUDA ops' one-time content check. An entry matches only
// the same TensorImpl objects, at the same version counters and data pointers, under the same
// key (what else the value depends on: a geometry, a bound). Weak references keep a freed
// tensor's address from ever matching a new tensor. Every in-place torch op and load_state_dict
// bumps the version counter, so an edited weight is seen at once; content changed behind it
// (.data, numpy views, raw pointers) is not, and the ops using this say what they do then.
// Inference tensors have no version counter and are never cached.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace compressor {

template <class Value>
class TensorCache {
 public:
  using Key = std::vector<int64_t>;

  // The value kept for (a, b, key), or nullptr.
  std::shared_ptr<const Value> find(const at::Tensor& a, const at::Tensor& b, const Key& key) {
    if (!cacheable(a, b)) return nullptr;
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto it = entries_.find(a.unsafeGetTensorImpl());
    if (it == entries_.end()) return nullptr;
    for (const Entry& e : it->second)
      if (e.matches(a, b, key)) return e.value;
    return nullptr;
  }

  void add(const at::Tensor& a, const at::Tensor& b, Key key, std::shared_ptr<const Value> value) {
    if (!cacheable(a, b)) return;
    const std::lock_guard<std::mutex> lock(mutex_);
    // Adding is rare (a new weight, geometry or version), so this is where entries of freed or
    // edited tensors go, with the memory their values hold.
    for (auto it = entries_.begin(); it != entries_.end();) {
      auto& list = it->second;
      list.erase(std::remove_if(list.begin(), list.end(), [](const Entry& e) { return e.stale(); }),
                 list.end());
      it = list.empty() ? entries_.erase(it) : std::next(it);
    }
    auto& list = entries_[a.unsafeGetTensorImpl()];
    if (list.size() >= kPerTensor) list.erase(list.begin());  // the oldest geometry
    list.push_back(Entry{Weak(a.getIntrusivePtr()), Weak(b.getIntrusivePtr()), a._version(),
                         b._version(), a.data_ptr(), b.data_ptr(), std::move(key),
                         std::move(value)});
  }

 private:
  static constexpr size_t kPerTensor = 8;  // geometries kept for one weight (input sizes)
  using Weak = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

  static bool cacheable(const at::Tensor& a, const at::Tensor& b) {
    return !a.is_inference() && !b.is_inference();
  }

  struct Entry {
    Weak a, b;
    int64_t a_version, b_version;
    const void *a_data, *b_data;
    Key key;
    std::shared_ptr<const Value> value;

    bool stale() const {
      const auto live_a = a.lock(), live_b = b.lock();
      return !live_a || !live_b || live_a->version_counter().current_version() != a_version ||
             live_b->version_counter().current_version() != b_version;
    }
    bool matches(const at::Tensor& ta, const at::Tensor& tb, const Key& k) const {
      return a.lock().get() == ta.unsafeGetTensorImpl() &&
             b.lock().get() == tb.unsafeGetTensorImpl() && a_version == ta._version() &&
             b_version == tb._version() && a_data == ta.data_ptr() && b_data == tb.data_ptr() &&
             key == k;
    }
  };

  std::mutex mutex_;
  std::unordered_map<const c10::TensorImpl*, std::vector<Entry>> entries_;
};

}  // namespace compressor
