#include "kernels/device.h"

namespace herd::kernels {
CudaInfo cuda_info() { return {}; }

std::string cuda_error(int code) { return "CUDA error " + std::to_string(code); }
}  // namespace herd::kernels
