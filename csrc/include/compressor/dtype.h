// A torch-free dtype tag for parameter structs, so .cu files never include torch headers.
#pragma once

namespace compressor {

enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

}  // namespace compressor
