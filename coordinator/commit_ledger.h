// What the job has committed: steps (every rank of the gang reported the step) and
// checkpoints (every rank reported its share's files), the newest checkpoint a
// restart resumes from, and the figures derived from the commits (last loss, ETA).
// Plain data: the Job holds its lock around it, journals each commit before it
// calls commit_*, and resets the pending reports when a new gang forms.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace herd::coordinator {

class CommitLedger {
 public:
  struct Checkpoint {
    uint64_t step = 0;
    std::string path, digest;
  };
  struct StepTotals {
    uint64_t tokens = 0;
    double loss = 0;  // token-weighted mean over the ranks
  };

  // At a restart: the newest of `committed` (oldest first, as journaled) whose files
  // still match, or none. Returns "skipping PATH: what is wrong" for each newer one
  // passed over. A checkpoint on a file system this process does not see (its
  // directory's parent is absent here) is taken on the journal's word.
  std::vector<std::string> resume_from(const std::vector<Checkpoint>& committed);

  // A rank's report of `step` (reports come in step order per rank). The totals
  // once `gang_size` ranks reported it.
  std::optional<StepTotals> report_step(uint64_t step, uint64_t tokens, double loss, size_t gang_size);
  void commit_step(uint64_t step, double loss, double imbalance, double now);

  // A rank's share of checkpoint `step`. Every share by rank once `gang_size`
  // ranks reported theirs.
  std::optional<std::vector<Checkpoint>> report_checkpoint(uint64_t step, uint32_t rank, std::string path,
                                                           std::string digest, size_t gang_size);
  void commit_checkpoint(const Checkpoint& checkpoint);
  // Whether `rank` reported a share of a checkpoint not committed yet.
  bool holds_checkpoint_share(uint32_t rank) const;

  // A new gang resumes at the last checkpoint: later steps are trained again.
  void restart();

  uint64_t committed_step() const { return committed_step_; }
  uint64_t checkpoint_step() const { return checkpoint_.step; }
  const std::string& checkpoint_path() const { return checkpoint_.path; }
  double last_loss() const { return last_loss_; }
  double last_imbalance() const { return last_imbalance_; }
  // Seconds to `total_steps` at the pace of the last 20 commits; none before two.
  std::optional<double> eta_seconds(uint64_t total_steps) const;

 private:
  struct Pending {
    uint32_t ranks = 0;
    uint64_t tokens = 0;
    double weighted_loss = 0;
  };
  uint64_t committed_step_ = 0;
  Checkpoint checkpoint_;
  std::map<uint64_t, Pending> steps_;
  std::map<uint64_t, std::map<uint32_t, Checkpoint>> checkpoints_;  // step -> rank -> share
  std::deque<double> commit_times_;
  double last_loss_ = 0;
  double last_imbalance_ = 1;
};

}  // namespace herd::coordinator
