// What herd's CUDA kernels were built with and what the machine offers. kernels/
// knows nothing of the rest of herd.
#pragma once

#include <string>

namespace herd::kernels {

struct CudaInfo {
  bool compiled = false;    // herd's CUDA kernels are in this binary
  int runtime_version = 0;  // CUDART_VERSION they were built against, e.g. 13000
  int device_count = 0;     // visible GPUs (0 without a driver)
};

CudaInfo cuda_info();

// A CUDA status the kernels returned, by name and meaning:
// "cudaErrorInvalidValue (invalid argument)"; "CUDA error N" in a build without CUDA.
std::string cuda_error(int code);

}  // namespace herd::kernels
