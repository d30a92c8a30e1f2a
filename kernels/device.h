// What herd's CUDA kernels were built with and what the machine offers. kernels/
// knows nothing of the rest of herd.
#pragma once

namespace herd::kernels {

struct CudaInfo {
  bool compiled = false;    // herd's CUDA kernels are in this binary
  int runtime_version = 0;  // CUDART_VERSION they were built against, e.g. 13000
  int device_count = 0;     // visible GPUs (0 without a driver)
};

CudaInfo cuda_info();

}  // namespace herd::kernels
