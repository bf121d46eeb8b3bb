// Argument checks that the CPU op and the CUDA binding of pow2_linear share, so both reject the
// same values with the same message (the Python wrapper's check_n1 in packing.py agrees).
#pragma once
#include <cstdint>

#include "compressor/checks.h"

namespace compressor {

// Every decoded exponent n1 - 7 .. n1 must be a normal float32 exponent: the CPU kernels build
// the weights from float bits, so n1 outside this range would decode to denormals or garbage.
constexpr int64_t kPow2MinN1 = -119;
constexpr int64_t kPow2MaxN1 = 127;

inline void check_pow2_format(const char* op, int64_t bits, int64_t n1, int64_t in_features) {
  CMP_CHECK(bits >= 2 && bits <= 5, op, "bits must be in 2..5, got ", bits);
  CMP_CHECK(n1 >= kPow2MinN1 && n1 <= kPow2MaxN1, op, "n1 must be in ", kPow2MinN1, "..",
            kPow2MaxN1, ", got ", n1);
  CMP_CHECK(in_features >= 0, op, "in_features must be >= 0, got ", in_features);
}

}  // namespace compressor
