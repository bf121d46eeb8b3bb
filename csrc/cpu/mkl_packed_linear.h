// x W^T through MKL's packed GEMM, reached via the mkl:: ops torch itself registers (inductor
// uses them for frozen Linear layers). Packing W once and reusing it across many small-M
// products pays off in recurrent loops: for the ON-LSTM step (20 x 1150 by 1150 x 4830, fp32,
// 2 threads, Xeon) a step drops from 1.4-1.7 ms (addmm) to 0.9 ms; packing costs about 6 ms.
// Only float32 CPU tensors and torch builds with MKL have these ops; callers fall back otherwise.
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>

namespace compressor::cpu {

class MklPackedLinear {
 public:
  // weight (N, K); `batch` is the row count of every later input. nullopt when unsupported.
  static std::optional<MklPackedLinear> make(const at::Tensor& weight, int64_t batch) {
    if (weight.scalar_type() != at::kFloat || !weight.device().is_cpu() || batch <= 0) {
      return std::nullopt;
    }
    const auto& ops = handles();
    if (!ops) return std::nullopt;
    auto w = weight.contiguous();
    auto packed = ops->reorder.typed<at::Tensor(const at::Tensor&, int64_t)>().call(w, batch);
    return MklPackedLinear(std::move(w), std::move(packed), batch);
  }

  // x (batch, K) contiguous float -> x W^T (batch, N), a new tensor.
  at::Tensor operator()(const at::Tensor& x) const {
    return handles()
        ->linear
        .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                          const std::optional<at::Tensor>&, int64_t)>()
        .call(x, packed_, weight_, std::nullopt, batch_);
  }

 private:
  struct Handles {
    c10::OperatorHandle reorder, linear;
  };

  // Looked up once; absent when this torch was built without MKL.
  static const std::optional<Handles>& handles() {
    static const std::optional<Handles> found = []() -> std::optional<Handles> {
      auto& dispatcher = c10::Dispatcher::singleton();
      auto reorder = dispatcher.findSchema({"mkl::_mkl_reorder_linear_weight", ""});
      auto linear = dispatcher.findSchema({"mkl::_mkl_linear", ""});
      if (!reorder || !linear || !reorder->hasKernelForDispatchKey(c10::DispatchKey::CPU) ||
          !linear->hasKernelForDispatchKey(c10::DispatchKey::CPU)) {
        return std::nullopt;
      }
      return Handles{*reorder, *linear};
    }();
    return found;
  }

  MklPackedLinear(at::Tensor weight, at::Tensor packed, int64_t batch)
      : weight_(std::move(weight)), packed_(std::move(packed)), batch_(batch) {}

  at::Tensor weight_, packed_;
  int64_t batch_;
};

}  // namespace compressor::cpu
