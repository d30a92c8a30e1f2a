#include "worker/model/activation_offload.h"

#include <optional>
#include <stdexcept>

#include <fmt/format.h>

#ifdef HERD_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace herd::model {

struct ActivationOffload::Entry {
  torch::Tensor host;  // pinned (a GPU input), or the clone of a CPU one
  torch::Device device = torch::kCPU;
  torch::Tensor back;  // on the device again, once a copy back has started
#ifdef HERD_CUDA
  std::optional<at::cuda::CUDAEvent> arrived;  // on the copy stream, after the copy back
#endif
};

#ifdef HERD_CUDA
struct ActivationOffload::Streams {
  c10::cuda::CUDAStream copy;
};
namespace {
// `later` waits for what `earlier` has been given so far.
void follow(const c10::cuda::CUDAStream& earlier, const c10::cuda::CUDAStream& later) {
  at::cuda::CUDAEvent point;
  point.record(earlier);
  point.block(later);
}
}  // namespace
#else
struct ActivationOffload::Streams {};
#endif

ActivationOffload::ActivationOffload() = default;
ActivationOffload::~ActivationOffload() = default;

void ActivationOffload::save(int64_t layer, const torch::Tensor& input) {
  auto e = std::make_unique<Entry>();
  e->device = input.device();
  if (input.is_cpu()) {
    e->host = input.clone();
  } else {
#ifdef HERD_CUDA
    const c10::cuda::CUDAGuard guard(input.device());
    if (!streams_) streams_ = std::make_unique<Streams>(Streams{c10::cuda::getStreamFromPool()});
    const auto compute = c10::cuda::getCurrentCUDAStream();
    e->host = torch::empty(input.sizes(), input.options().device(torch::kCPU).pinned_memory(true));
    follow(compute, streams_->copy);  // the input is written
    {
      const c10::cuda::CUDAStreamGuard on_copy(streams_->copy);
      e->host.copy_(input, /*non_blocking=*/true);
    }
    // Once the caller drops the input, its memory is reused only after the copy.
    c10::cuda::CUDACachingAllocator::recordStream(input.storage().data_ptr(), streams_->copy);
#else
    throw std::logic_error("activation offload: a " + input.device().str() + " tensor in a build without CUDA");
#endif
  }
  entries_[layer] = std::move(e);
}

void ActivationOffload::prefetch(int64_t layer) {
  auto it = entries_.find(layer);
  if (it == entries_.end() || it->second->back.defined()) return;
  auto& e = *it->second;
  if (e.device.is_cpu()) {
    e.back = e.host;
    return;
  }
#ifdef HERD_CUDA
  const c10::cuda::CUDAGuard guard(e.device);
  const auto compute = c10::cuda::getCurrentCUDAStream();
  // Allocated for the compute stream, which reads it; written on the copy stream
  // once the compute stream is past the allocation.
  e.back = torch::empty(e.host.sizes(), e.host.options().device(e.device).pinned_memory(false));
  follow(compute, streams_->copy);
  {
    const c10::cuda::CUDAStreamGuard on_copy(streams_->copy);
    e.back.copy_(e.host, /*non_blocking=*/true);
  }
  e.arrived.emplace();
  e.arrived->record(streams_->copy);
#endif
}

torch::Tensor ActivationOffload::load(int64_t layer) {
  prefetch(layer);
  auto it = entries_.find(layer);
  if (it == entries_.end()) {
    throw std::logic_error(fmt::format("activation offload: layer {}'s input was not saved", layer));
  }
  auto e = std::move(it->second);
  entries_.erase(it);
#ifdef HERD_CUDA
  if (e->arrived) e->arrived->block(c10::cuda::getCurrentCUDAStream(e->device.index()));
#endif
  prefetch(layer - 1);
  return e->back;  // the pinned copy is freed; the host allocator waits for the copy back first
}

int64_t ActivationOffload::held_bytes() const {
  int64_t total = 0;
  for (const auto& [layer, e] : entries_) total += static_cast<int64_t>(e->host.nbytes());
  return total;
}

}  // namespace herd::model
