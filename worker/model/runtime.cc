#include "worker/model/runtime.h"

#include <torch/torch.h>
#include <torch/version.h>

#include <fmt/format.h>

#include "common/version.h"
#include "kernels/device.h"

namespace herd::worker {

BuildInfo build_info() {
  BuildInfo info;
  info.libtorch_version = TORCH_VERSION;
  info.torch_cuda_version = HERD_TORCH_CUDA_VERSION;
  auto cuda = kernels::cuda_info();
  info.herd_cuda_kernels = cuda.compiled;
  info.cuda_runtime_version = cuda.runtime_version;
  info.visible_gpus = cuda.compiled ? cuda.device_count : static_cast<int>(torch::cuda::device_count());
  return info;
}

std::string describe(const BuildInfo& info) {
  std::string cuda = "no";
  if (info.herd_cuda_kernels) {
    cuda = fmt::format("yes (herd kernels built with CUDA {}.{}; libtorch built for CUDA {})",
                       info.cuda_runtime_version / 1000, (info.cuda_runtime_version % 1000) / 10,
                       info.torch_cuda_version.empty() ? "-" : info.torch_cuda_version);
  }
  return fmt::format(
      "herd {} (git {})\n"
      "libtorch {}\n"
      "CUDA compiled in: {}\n"
      "GPUs visible: {}",
      herd::version(), herd::git_revision(), info.libtorch_version, cuda, info.visible_gpus);
}

}  // namespace herd::worker
