// A Collective that adds up, by operation, the time its caller spends waiting on
// each operation (Work::wait and barrier): what a step loses to communication that
// did not overlap its compute. On NCCL a wait orders the caller's stream and does
// not block the host, so the figure there is the host's wait, not the GPU's.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "worker/comm/collective.h"

namespace herd::comm {

class Timed final : public Collective {
 public:
  explicit Timed(std::unique_ptr<Collective> inner) : inner_(std::move(inner)) {}

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string backend() const override { return inner_->backend(); }
  Work all_gather(torch::Tensor out, torch::Tensor in) override { return timed("all_gather", inner_->all_gather(out, in)); }
  Work reduce_scatter(torch::Tensor out, torch::Tensor in) override {
    return timed("reduce_scatter", inner_->reduce_scatter(out, in));
  }
  Work all_reduce(torch::Tensor t) override { return timed("all_reduce", inner_->all_reduce(t)); }
  Work broadcast(torch::Tensor t, int root) override { return timed("broadcast", inner_->broadcast(t, root)); }
  void barrier() override;

  // Seconds waited by operation since the last take().
  std::map<std::string, double> take();

 private:
  Work timed(const char* op, Work work);
  void add(const char* op, double seconds);

  std::unique_ptr<Collective> inner_;
  std::mutex mutex_;
  std::map<std::string, double> waited_;
};

}  // namespace herd::comm
