#include "coordinator/commit_ledger.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "common/checkpoint_files.h"

namespace herd::coordinator {
namespace {

TEST(CommitLedger, AStepCommitsOnceEveryRankReportedItWithTheTokenWeightedLoss) {
  CommitLedger ledger;
  EXPECT_FALSE(ledger.report_step(1, 30, 2.0, 2));
  const auto totals = ledger.report_step(1, 10, 6.0, 2);
  ASSERT_TRUE(totals);
  EXPECT_EQ(totals->tokens, 40u);
  EXPECT_DOUBLE_EQ(totals->loss, (30 * 2.0 + 10 * 6.0) / 40);
  ledger.commit_step(1, totals->loss, 1.25, 100);
  EXPECT_EQ(ledger.committed_step(), 1u);
  EXPECT_DOUBLE_EQ(ledger.last_imbalance(), 1.25);
  EXPECT_FALSE(ledger.eta_seconds(10));  // one commit gives no pace
  ledger.commit_step(2, 1.0, 1, 104);
  ledger.commit_step(3, 1.0, 1, 108);
  EXPECT_DOUBLE_EQ(*ledger.eta_seconds(10), 4.0 * 7);
  EXPECT_EQ(ledger.report_step(4, 0, 0, 1)->loss, 0.0);  // no tokens: no division by zero
}

TEST(CommitLedger, ACheckpointCommitsWithEveryRanksShareAndARestartGoesBackToIt) {
  CommitLedger ledger;
  for (uint64_t s = 1; s <= 3; ++s) ledger.commit_step(s, 1, 1, static_cast<double>(s));
  EXPECT_FALSE(ledger.report_checkpoint(2, 1, "b/checkpoint-2", "d1", 2));
  EXPECT_TRUE(ledger.holds_checkpoint_share(1));
  EXPECT_FALSE(ledger.holds_checkpoint_share(0));
  const auto shares = ledger.report_checkpoint(2, 0, "a/checkpoint-2", "d0", 2);
  ASSERT_TRUE(shares);
  ASSERT_EQ(shares->size(), 2u);
  EXPECT_EQ(shares->front().path, "a/checkpoint-2");  // by rank
  EXPECT_EQ(shares->back().digest, "d1");
  ledger.commit_checkpoint(shares->front());
  EXPECT_EQ(ledger.checkpoint_step(), 2u);
  EXPECT_EQ(ledger.checkpoint_path(), "a/checkpoint-2");
  EXPECT_FALSE(ledger.holds_checkpoint_share(1));
  EXPECT_EQ(ledger.committed_step(), 3u);
  EXPECT_FALSE(ledger.report_step(4, 1, 1, 2));
  ledger.restart();
  EXPECT_EQ(ledger.committed_step(), 2u);
  EXPECT_FALSE(ledger.report_step(4, 1, 1, 2));  // the half-reported step 4 was dropped
}

TEST(CommitLedger, AResumeTakesTheNewestCheckpointWhoseFilesStillMatch) {
  const auto dir = std::filesystem::temp_directory_path() / ("herd-ledger-test-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::vector<CommitLedger::Checkpoint> committed;
  for (uint64_t step : {2, 4, 6}) {
    const auto ckpt = checkpoint_dir(dir, step);
    std::filesystem::create_directories(ckpt);
    std::ofstream(ckpt / "adapter.bin") << "weights " << step;
    std::ofstream(ckpt / kCheckpointManifest)
        << R"({"files": {"adapter.bin": {"bytes": 9, "hash": "not-checked-first"}}})";
    committed.push_back({step, ckpt.string(), ""});
  }
  std::ofstream(checkpoint_dir(dir, 2) / kCheckpointManifest) << R"({"files": {}})";
  committed[0].digest = checkpoint_digest(checkpoint_dir(dir, 2));
  std::filesystem::remove(checkpoint_dir(dir, 6) / kCheckpointManifest);

  CommitLedger ledger;
  const auto warnings = ledger.resume_from(committed);
  EXPECT_EQ(ledger.checkpoint_step(), 2u);
  EXPECT_EQ(ledger.committed_step(), 2u);
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_EQ(warnings[0], "skipping " + checkpoint_dir(dir, 6).string() + ": checkpoint.json is missing");
  EXPECT_EQ(warnings[1], "skipping " + checkpoint_dir(dir, 4).string() + ": adapter.bin does not match its hash");

  CommitLedger elsewhere;  // on a file system this process does not see: the journal's word
  EXPECT_TRUE(elsewhere.resume_from({{8, "/nonexistent-herd-mount/checkpoint-8", "x"}}).empty());
  EXPECT_EQ(elsewhere.checkpoint_step(), 8u);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace herd::coordinator
