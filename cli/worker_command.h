// `herd worker` (one worker of a job, however it was launched) and
// `herd train --workers N` (a local coordinator and N worker processes).
#pragma once

#include <csignal>
#include <string>

namespace herd::cli {

struct WorkerArgs {
  std::string config_path;  // the job's YAML
  std::string coordinator;  // HOST:PORT; empty: from the launcher's environment
  std::string token_file;
};
// Exit status: 0 done, 1 user error or failed job.
int worker_command(const WorkerArgs& args);

// Runs the job on `workers` local processes (`self` is this herd binary); `resume`
// (or checkpoint.resume: auto): from the newest complete checkpoint.
int local_workers_command(const std::string& config_path, int workers, bool resume, const std::string& self);

}  // namespace herd::cli
