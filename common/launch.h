// Who this worker is and where its coordinator is, from the flags and the
// environment of whatever launched it (mpirun, torchrun, a Kubernetes Indexed
// Job, or a person). Validated where it enters: a malformed variable is an error
// that names it.
#pragma once

#include <functional>
#include <optional>
#include <stdexcept>
#include <string>

namespace herd {

struct Launch {
  std::string source;       // "flags", "openmpi", "torchrun" or "kubernetes"
  std::string coordinator;  // HOST:PORT; empty when this process must host it
  std::optional<int> rank;  // known before gang formation only under mpirun/torchrun
  std::optional<int> world_size;
  int local_rank = 0;  // picks the GPU
};

class LaunchError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
EnvLookup process_env();

// Precedence: --coordinator, then OpenMPI's variables, then torchrun's
// (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), then a Kubernetes
// Indexed Job's JOB_COMPLETION_INDEX with HERD_COORDINATOR. Throws LaunchError.
Launch detect_launch(const std::string& coordinator_flag, const EnvLookup& env);

}  // namespace herd
