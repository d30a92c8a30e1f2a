// The element types herd's CUDA kernels read and write.
#pragma once

namespace herd::kernels {

enum class FloatType { kFloat32, kBFloat16, kFloat16 };

}  // namespace herd::kernels
