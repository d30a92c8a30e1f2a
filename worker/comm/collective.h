// Collectives over the ranks of one gang, behind one interface with two backends:
// Gloo (host memory over TCP; a CUDA tensor goes through a host copy, as PyTorch's
// Gloo backend does it) and NCCL (CUDA tensors). A world of one rank gets a
// local implementation whose operations are copies. Every operation is
// asynchronous: it is queued to the backend's own thread (Gloo) or stream (NCCL) and
// returns a Work to wait on, so communication overlaps compute. Operations must be
// issued in the same order on every rank. Every operation has a timeout; a failure
// or timeout throws CommError naming the operation, the rank and the attempt, and
// leaves the group broken (later operations fail at once): the worker tears it down
// and rejoins under the next attempt.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <torch/torch.h>

#include "worker/comm/store.h"

namespace herd::comm {

class Work {
 public:
  Work() = default;
  explicit Work(std::function<void()> wait) : wait_(std::move(wait)) {}
  // Returns when the operation is done (NCCL: when the caller's stream is ordered
  // after it); throws its CommError. A default Work is done.
  void wait() const {
    if (wait_) wait_();
  }

 private:
  std::function<void()> wait_;
};

struct CollectiveOptions {
  int rank = 0, size = 1;
  uint64_t attempt = 0;  // named in errors
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
  // Gloo: the address peers reach this rank at, or the interface to take it from
  // (GLOO_SOCKET_IFNAME, as PyTorch reads it).
  std::string hostname, iface;
  int device = 0;  // NCCL: the CUDA device (LOCAL_RANK)
};

class Collective {
 public:
  virtual ~Collective() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;

  // out (contiguous, size() * in.numel() elements of in's dtype) <- every rank's
  // `in`, rank r's at [r * n, (r + 1) * n). Any dtype.
  virtual Work all_gather(torch::Tensor out, torch::Tensor in) = 0;
  // out (n elements) <- the sum over ranks of chunk rank() of `in` (size() * n).
  virtual Work reduce_scatter(torch::Tensor out, torch::Tensor in) = 0;
  // t <- the sum of every rank's t, in place. float32, float64 or int64.
  virtual Work all_reduce(torch::Tensor t) = 0;
  // t <- root's t, in place. Any dtype.
  virtual Work broadcast(torch::Tensor t, int root) = 0;
  virtual void barrier() = 0;
};

// backend: "gloo", "nccl", or "local" (one rank, no communication).
// Connects the ranks through `store` (keys under the caller's prefix) and throws
// CommError when they do not meet within the timeout.
std::unique_ptr<Collective> connect(const std::string& backend, Store& store, const CollectiveOptions& options);

}  // namespace herd::comm
