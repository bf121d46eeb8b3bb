// A parallel loop over tasks that keeps every thread busy when the cores run at different
// speeds. at::parallel_for gives each thread one fixed contiguous share, so a region ends when
// the slowest thread does: on a VM whose neighbours load some cores that was most of the time
// lost at 2 threads (a whole pruned ResNet-50 ran 1.17x faster on 2 threads than on 1, a dense
// matmul 1.7x). Here each thread still starts on its own contiguous share (so neighbouring
// tasks, which share inputs, stay on one core) and, once done, takes tasks from the far end of
// the others' shares.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>

namespace compressor {

namespace detail {

// [front, back) of one thread's share, packed in one word so that taking from either end is
// one compare-and-swap.
class TaskRange {
 public:
  void reset(int64_t front, int64_t back) { bits_ = pack(front, back); }
  int64_t take_front() { return take(true); }
  int64_t take_back() { return take(false); }

 private:
  static uint64_t pack(int64_t front, int64_t back) {
    return static_cast<uint64_t>(front) << 32 | static_cast<uint64_t>(back);
  }
  int64_t take(bool from_front) {
    uint64_t seen = bits_.load(std::memory_order_relaxed);
    while (true) {
      const int64_t front = static_cast<int64_t>(seen >> 32);
      const int64_t back = static_cast<int64_t>(seen & 0xffffffffu);
      if (front >= back) return -1;
      const uint64_t next = from_front ? pack(front + 1, back) : pack(front, back - 1);
      if (bits_.compare_exchange_weak(seen, next, std::memory_order_relaxed))
        return from_front ? front : back - 1;
    }
  }
  std::atomic<uint64_t> bits_{0};
};

}  // namespace detail

// fn(i) for every i in [0, n), each exactly once, over the intra-op threads (n < 2^31).
template <class Fn>
void balanced_for(int64_t n, const Fn& fn) {
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), n);
  if (threads <= 1 || at::in_parallel_region()) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::unique_ptr<detail::TaskRange[]> shares(new detail::TaskRange[threads]);
  for (int64_t k = 0; k < threads; ++k) shares[k].reset(k * n / threads, (k + 1) * n / threads);
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      for (int64_t i; (i = shares[k].take_front()) >= 0;) fn(i);
      for (int64_t d = 1; d < threads; ++d)
        for (int64_t i; (i = shares[(k + d) % threads].take_back()) >= 0;) fn(i);
    }
  });
}

}  // namespace compressor
