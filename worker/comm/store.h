// The rendezvous store ranks bootstrap through: Gloo's addresses and NCCL's
// unique id travel through it. Implementations: InMemoryStore (ranks that are
// threads of one process), the coordinator's KV store (client/client.h,
// scoped to the gang's attempt), and, under mpirun, the coordinator whose address
// rank 0 broadcast over MPI.
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>

#include "common/gang_error.h"

namespace herd::comm {

// A collective or its bootstrap failed or timed out; the message names the
// operation, the rank and the attempt.
class CommError : public GangError {
 public:
  using GangError::GangError;
};

class Store {
 public:
  virtual ~Store() = default;
  virtual void set(const std::string& key, const std::string& value) = 0;
  // Waits until `key` is set; throws CommError after `timeout`.
  virtual std::string get(const std::string& key, std::chrono::milliseconds timeout) = 0;
};

class InMemoryStore : public Store {
 public:
  void set(const std::string& key, const std::string& value) override;
  std::string get(const std::string& key, std::chrono::milliseconds timeout) override;

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::map<std::string, std::string> values_;
};

}  // namespace herd::comm
