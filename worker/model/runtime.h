// What this worker binary was built with and what it runs on.
#pragma once

#include <string>

namespace herd::worker {

struct BuildInfo {
  std::string libtorch_version;    // e.g. "2.15.0"
  std::string torch_cuda_version;  // CUDA the libtorch wheel was built for, "" if none
  bool herd_cuda_kernels = false;  // herd's own CUDA kernels are compiled in
  int cuda_runtime_version = 0;    // CUDART_VERSION of herd's kernels
  int visible_gpus = 0;
};

BuildInfo build_info();
std::string describe(const BuildInfo& info);  // one line per fact, for --version

}  // namespace herd::worker
