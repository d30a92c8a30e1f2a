// The launch modes, each one function: they discover the rank (discovery.h),
// host the coordinator where this process should (hosted.h), start or supervise
// workers, install the signal handlers (signals.h) and answer the exit status:
// 0 the job is DONE, 130 it was stopped at a checkpoint (a signal or a drain;
// --resume continues), 1 it failed or the input was wrong (the message says which).
#pragma once

#include <string>

#include "client/options.h"

namespace herd {
struct Config;
}

namespace herd::launch {

// `herd worker [CONFIG] [--coordinator HOST:PORT] [--token-file F]`: one worker of
// a job, however it was launched. Without CONFIG it takes the coordinator's.
struct WorkerArgs {
  std::string config_path;
  // --coordinator (empty: from the launcher's environment), --token-file, --tls-ca,
  // --tls-server-name; client/options.h says what each falls back to.
  client::ClientFlags flags;
};
int run_worker_process(const WorkerArgs& args);

// `herd train CONFIG [--workers N] [--resume]`: the coordinator in this process
// on loopback, and one worker in this process (workers 0) or N worker processes
// (`self`: this herd binary). Without `resume` (or checkpoint.resume: auto) the job
// starts afresh.
int run_local(const Config& config, int workers, bool resume, const std::string& self);

}  // namespace herd::launch
