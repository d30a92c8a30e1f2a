// How a worker talks to its coordinator: in-process (`herd train`: the Job itself)
// or over gRPC (`herd worker`). The training loop (trainer.h) is the same either way.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "coordinator/auth.h"
#include "herd/proto/herd.pb.h"
#include "worker/comm/store.h"

namespace herd::coordinator {
class Job;
}

namespace herd::train {

struct Gang {
  uint32_t rank = 0, world_size = 1, accumulation = 1;
  uint64_t attempt = 0, resume_step = 0, total_steps = 0, steps_per_epoch = 0;
  std::string resume_checkpoint;  // "" when resume_step is 0
};

// This worker's attempt is over (a member died, the coordinator restarted or says
// RECOVERING): leave the step, wait for the next gang.
class AttemptOver : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The job ended (DONE, STOPPED, FAILED, cancelled) or its coordinator is gone.
class JobOver : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class CoordinatorLink {
 public:
  virtual ~CoordinatorLink() = default;
  virtual void join(const std::string& host, const std::string& device) = 0;
  // Blocks until this worker holds a rank in a gang of an attempt after `after`.
  virtual Gang wait_for_gang(uint64_t after) = 0;
  // The current attempt's rendezvous store.
  virtual comm::Store& store() = 0;
  virtual void open_stream(uint64_t from_step) = 0;
  // This rank's micro-batches of `step` (gang.accumulation of them).
  virtual std::vector<herd::v1::MicroBatch> next_step(uint64_t step) = 0;
  virtual void report_step(uint64_t step, double loss, uint64_t tokens, double seconds) = 0;
  virtual void commit_checkpoint(uint64_t step, const std::string& path, const std::string& digest) = 0;
  // Leaves the attempt's stream (once a new gang formed, or at the end).
  virtual void close_stream() = 0;
  // This rank's collective failed: the coordinator starts a new attempt (best effort:
  // a refusal means one has started already).
  virtual void report_failure(const std::string& reason) = 0;
  // This rank's share of the held-out split (empty: no eval).
  virtual std::vector<herd::v1::MicroBatch> eval_batches() = 0;
};

std::unique_ptr<CoordinatorLink> local_link(coordinator::Job& job, const std::string& job_id);
std::unique_ptr<CoordinatorLink> grpc_link(const coordinator::ClientOptions& client, const std::string& job_id);

}  // namespace herd::train
