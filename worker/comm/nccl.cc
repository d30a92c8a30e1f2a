// The NCCL backend (HERD_CUDA builds): CUDA tensors, one communicator per gang
// attempt, bootstrapped by rank 0's unique id through the Store. Operations run on
// a communication stream of their own, ordered after the work already queued on
// the caller's stream; Work::wait orders the caller's stream after the operation
// and, while waiting, watches the communicator: an asynchronous NCCL error or the
// timeout aborts it and throws CommError.
#include <chrono>
#include <thread>

#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <fmt/format.h>
#include <nccl.h>

#include "worker/comm/backends.h"

namespace herd::comm {
namespace {

ncclDataType_t nccl_type(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return ncclFloat32;
    case torch::kFloat64: return ncclFloat64;
    case torch::kFloat16: return ncclFloat16;
    case torch::kBFloat16: return ncclBfloat16;
    case torch::kInt64: return ncclInt64;
    case torch::kInt32: return ncclInt32;
    case torch::kUInt8: return ncclUint8;
    default: throw std::invalid_argument("NCCL: unsupported dtype");
  }
}

class NcclCollective : public Collective {
 public:
  NcclCollective(Store& store, const CollectiveOptions& options)
      : options_(options), stream_(c10::cuda::getStreamFromPool(/*isHighPriority=*/true, options.device)) {
    ncclUniqueId id;
    if (options.rank == 0) {
      check(ncclGetUniqueId(&id), "ncclGetUniqueId");
      store.set("nccl/id", std::string(reinterpret_cast<const char*>(&id), sizeof id));
    }
    const auto bytes = store.get("nccl/id", options.timeout);
    if (bytes.size() != sizeof id) throw CommError("NCCL: the store's unique id has the wrong size");
    std::memcpy(&id, bytes.data(), sizeof id);
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(options.device));
    check(ncclCommInitRank(&comm_, options.size, id, options.rank), "ncclCommInitRank");
  }
  ~NcclCollective() override {
    if (comm_) ncclCommDestroy(comm_);
  }

  int rank() const override { return options_.rank; }
  int size() const override { return options_.size; }
  std::string backend() const override { return "nccl"; }

  Work all_gather(torch::Tensor out, torch::Tensor in) override {
    return launch("all_gather", {out, in}, [&](cudaStream_t s) {
      return ncclAllGather(in.data_ptr(), out.data_ptr(), static_cast<size_t>(in.numel()), nccl_type(in.scalar_type()),
                           comm_, s);
    });
  }
  Work reduce_scatter(torch::Tensor out, torch::Tensor in) override {
    return launch("reduce_scatter", {out, in}, [&](cudaStream_t s) {
      return ncclReduceScatter(in.data_ptr(), out.data_ptr(), static_cast<size_t>(out.numel()),
                               nccl_type(in.scalar_type()), ncclSum, comm_, s);
    });
  }
  Work all_reduce(torch::Tensor t) override {
    return launch("all_reduce", {t}, [&](cudaStream_t s) {
      return ncclAllReduce(t.data_ptr(), t.data_ptr(), static_cast<size_t>(t.numel()), nccl_type(t.scalar_type()),
                           ncclSum, comm_, s);
    });
  }
  Work broadcast(torch::Tensor t, int root) override {
    return launch("broadcast", {t}, [&](cudaStream_t s) {
      return ncclBroadcast(t.data_ptr(), t.data_ptr(), static_cast<size_t>(t.numel()), nccl_type(t.scalar_type()),
                           root, comm_, s);
    });
  }
  void barrier() override {
    auto one = torch::ones({1}, torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA, options_.device));
    all_reduce(one).wait();
    c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(options_.device)).synchronize();
  }

 private:
  void check(ncclResult_t r, const char* what) const {
    if (r != ncclSuccess) {
      throw CommError(fmt::format("{} on rank {} of {} (attempt {}): {}", what, options_.rank, options_.size,
                                  options_.attempt, ncclGetErrorString(r)));
    }
  }

  template <class F>
  Work launch(const char* op, std::initializer_list<torch::Tensor> tensors, F&& call) {
    for (const auto& t : tensors) {
      if (!t.is_cuda() || !t.is_contiguous()) throw std::invalid_argument(fmt::format("{}: NCCL takes contiguous CUDA tensors", op));
    }
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(options_.device));
    auto caller = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(options_.device));
    at::cuda::CUDAEvent ready;
    ready.record(caller);
    ready.block(stream_);
    for (const auto& t : tensors) c10::cuda::CUDACachingAllocator::recordStream(t.storage().data_ptr(), stream_);
    check(call(stream_.stream()), op);
    auto done = std::make_shared<at::cuda::CUDAEvent>();
    done->record(stream_);
    const std::string what = fmt::format("{} on rank {} of {} (attempt {})", op, options_.rank, options_.size,
                                         options_.attempt);
    return Work([this, done, what] {
      const auto deadline = std::chrono::steady_clock::now() + options_.timeout;
      while (!done->query()) {
        ncclResult_t async = ncclSuccess;
        ncclCommGetAsyncError(comm_, &async);
        const bool late = std::chrono::steady_clock::now() > deadline;
        if (async != ncclSuccess || late) {
          ncclCommAbort(comm_);
          comm_ = nullptr;
          throw CommError(async != ncclSuccess ? fmt::format("{} failed: {}", what, ncclGetErrorString(async))
                                               : fmt::format("{} did not finish within {} s", what,
                                                             options_.timeout.count() / 1000.0));
        }
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
      done->block(c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(options_.device)));
    });
  }

  const CollectiveOptions options_;
  c10::cuda::CUDAStream stream_;
  ncclComm_t comm_ = nullptr;
};

}  // namespace

std::unique_ptr<Collective> connect_nccl(Store& store, const CollectiveOptions& options) {
  return std::make_unique<NcclCollective>(store, options);
}

}  // namespace herd::comm
