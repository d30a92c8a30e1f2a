#include "coordinator/commit_ledger.h"

#include <algorithm>
#include <filesystem>

#include <fmt/format.h>

#include "common/checkpoint_files.h"

namespace herd::coordinator {

std::vector<std::string> CommitLedger::resume_from(const std::vector<Checkpoint>& committed) {
  std::vector<std::string> warnings;
  for (auto it = committed.rbegin(); it != committed.rend(); ++it) {
    const std::filesystem::path dir(it->path);
    std::string problem;
    if (std::filesystem::is_directory(dir.parent_path())) {
      problem = checkpoint_problem(dir);
      if (problem.empty() && checkpoint_digest(dir) != it->digest) {
        problem = fmt::format("{} is not the one committed at step {}", kCheckpointManifest, it->step);
      }
    }
    if (problem.empty()) {
      checkpoint_ = *it;
      break;
    }
    warnings.push_back(fmt::format("skipping {}: {}", it->path, problem));
  }
  committed_step_ = checkpoint_.step;
  return warnings;
}

std::optional<CommitLedger::StepTotals> CommitLedger::report_step(uint64_t step, uint64_t tokens, double loss,
                                                                  size_t gang_size) {
  Pending& p = steps_[step];
  p.ranks += 1;
  p.tokens += tokens;
  p.weighted_loss += loss * static_cast<double>(tokens);
  if (p.ranks < gang_size) return std::nullopt;
  return StepTotals{p.tokens, p.tokens > 0 ? p.weighted_loss / static_cast<double>(p.tokens) : 0.0};
}

void CommitLedger::commit_step(uint64_t step, double loss, double imbalance, double now) {
  steps_.erase(step);
  committed_step_ = step;
  last_loss_ = loss;
  last_imbalance_ = imbalance;
  commit_times_.push_back(now);
  if (commit_times_.size() > 20) commit_times_.pop_front();
}

std::optional<std::vector<CommitLedger::Checkpoint>> CommitLedger::report_checkpoint(uint64_t step, uint32_t rank,
                                                                                     std::string path,
                                                                                     std::string digest,
                                                                                     size_t gang_size) {
  auto& shares = checkpoints_[step];
  shares[rank] = {step, std::move(path), std::move(digest)};
  if (shares.size() < gang_size) return std::nullopt;
  std::vector<Checkpoint> out;
  for (const auto& [r, share] : shares) out.push_back(share);
  return out;
}

void CommitLedger::commit_checkpoint(const Checkpoint& checkpoint) {
  checkpoint_ = checkpoint;
  checkpoints_.erase(checkpoints_.begin(), checkpoints_.upper_bound(checkpoint.step));
}

bool CommitLedger::holds_checkpoint_share(uint32_t rank) const {
  return std::any_of(checkpoints_.begin(), checkpoints_.end(), [&](const auto& step) { return step.second.count(rank); });
}

void CommitLedger::restart() {
  committed_step_ = checkpoint_.step;
  steps_.clear();
  checkpoints_.clear();
}

std::optional<double> CommitLedger::eta_seconds(uint64_t total_steps) const {
  if (commit_times_.size() < 2) return std::nullopt;
  const double per_step = (commit_times_.back() - commit_times_.front()) / static_cast<double>(commit_times_.size() - 1);
  return per_step * static_cast<double>(total_steps - committed_step_);
}

}  // namespace herd::coordinator
