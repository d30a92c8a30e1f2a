#include <cuda_runtime.h>

#include "kernels/device.h"

namespace herd::kernels {

CudaInfo cuda_info() {
  CudaInfo info;
  info.compiled = true;
  info.runtime_version = CUDART_VERSION;
  int count = 0;
  // No driver (a CPU machine) is an answer, not an error: zero devices.
  if (cudaGetDeviceCount(&count) == cudaSuccess) {
    info.device_count = count;
  } else {
    cudaGetLastError();
  }
  return info;
}

std::string cuda_error(int code) {
  const auto e = static_cast<cudaError_t>(code);
  return std::string(cudaGetErrorName(e)) + " (" + cudaGetErrorString(e) + ")";
}

}  // namespace herd::kernels
