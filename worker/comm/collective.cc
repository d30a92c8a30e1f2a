#include "worker/comm/collective.h"

#include <fmt/format.h>

#include "worker/comm/backends.h"

namespace herd::comm {

namespace {

// One rank: every operation is a copy or nothing.
class LocalCollective : public Collective {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "local"; }
  Work all_gather(torch::Tensor out, torch::Tensor in) override {
    if (out.data_ptr() != in.data_ptr()) out.view(in.sizes()).copy_(in);
    return {};
  }
  Work reduce_scatter(torch::Tensor out, torch::Tensor in) override {
    if (out.data_ptr() != in.data_ptr()) out.copy_(in.view(out.sizes()));
    return {};
  }
  Work all_reduce(torch::Tensor) override { return {}; }
  Work broadcast(torch::Tensor, int) override { return {}; }
  void barrier() override {}
};

}  // namespace

#ifndef HERD_CUDA
std::unique_ptr<Collective> connect_nccl(Store&, const CollectiveOptions&) {
  throw CommError("the NCCL backend needs a CUDA build of herd (HERD_CUDA)");
}
#endif

std::unique_ptr<Collective> connect(const std::string& backend, Store& store, const CollectiveOptions& options) {
  if (options.size < 1 || options.rank < 0 || options.rank >= options.size) {
    throw std::invalid_argument(fmt::format("rank {} of {}", options.rank, options.size));
  }
  if (backend == "local") {
    if (options.size != 1) {
      throw std::invalid_argument(fmt::format("the local backend has 1 rank, not {}", options.size));
    }
    return std::make_unique<LocalCollective>();
  }
  if (backend == "nccl") return connect_nccl(store, options);
  if (backend != "gloo") throw std::invalid_argument("collective backend '" + backend + "': local, gloo or nccl");
  return connect_gloo(store, options);
}

}  // namespace herd::comm
