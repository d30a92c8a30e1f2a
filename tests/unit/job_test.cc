// The coordinator's job state machine without a network: a fake clock, direct calls.
#include "coordinator/job.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <map>
#include <numeric>
#include <set>
#include <thread>
#include <tuple>

#include "tests/unit/file_size_limit.h"

namespace herd::coordinator {
namespace {

namespace v1 = herd::v1;
using grpc::StatusCode;

struct Fixture {
  double now = 1000;
  JobSettings settings;
  std::shared_ptr<SyntheticSamples> samples;
  std::vector<size_t> train;
  std::unique_ptr<Job> job;

  explicit Fixture(uint32_t world = 2, size_t n = 20, std::filesystem::path journal = {}) {
    settings.job_id = "job";
    settings.world_size = world;
    settings.min_workers = world;
    settings.batch_size = 1;
    settings.gradient_accumulation_steps = 2;
    settings.num_train_epochs = 2;
    settings.heartbeat_timeout_s = 10;
    settings.replacement_timeout_s = 30;
    samples = std::make_shared<SyntheticSamples>(n, 4, 12, 7);
    train.resize(n);
    std::iota(train.begin(), train.end(), size_t{0});
    reopen(journal);
  }
  void reopen(const std::filesystem::path& journal) {
    job.reset();
    job = std::make_unique<Job>(settings, samples, train, journal, [this] { return now; });
  }
  std::string add(const std::string& host = "h") {
    v1::RegisterRequest q;
    q.set_job_id("job");
    q.set_host(host);
    v1::RegisterResponse r;
    EXPECT_TRUE(job->Register(q, &r).ok());
    return r.worker_id();
  }
  grpc::Status wait(const std::string& id, v1::WaitForGangResponse* r, uint64_t after_attempt = 0) {
    v1::WaitForGangRequest q;
    q.set_worker_id(id);
    q.set_timeout_seconds(1);
    q.set_after_attempt(after_attempt);
    return job->WaitForGang(q, r, [] { return false; });
  }
  v1::WaitForGangResponse gang(const std::string& id, uint64_t after_attempt = 0) {
    v1::WaitForGangResponse r;
    auto s = wait(id, &r, after_attempt);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return r;
  }
  grpc::Status beat(const std::string& id, v1::HeartbeatResponse* r = nullptr) {
    v1::HeartbeatRequest q;
    q.set_worker_id(id);
    v1::HeartbeatResponse ignored;
    return job->Heartbeat(q, r ? r : &ignored);
  }
  grpc::Status report(const std::string& id, uint64_t attempt, uint64_t step, bool* committed = nullptr) {
    v1::ReportStepRequest q;
    q.set_worker_id(id);
    q.set_attempt(attempt);
    q.set_step(step);
    q.set_loss(1.5);
    q.set_tokens(10);
    v1::ReportStepResponse r;
    auto s = job->ReportStep(q, &r);
    if (committed) *committed = r.committed();
    return s;
  }
  // Two workers in attempt 1 that reported steps 1..3 and committed a checkpoint of step 2.
  std::tuple<std::string, std::string, uint64_t> two_ranks_past_checkpoint_2() {
    const auto a = add(), b = add();
    const uint64_t one = gang(a).attempt();
    for (uint64_t s = 1; s <= 3; ++s) {
      EXPECT_TRUE(report(a, one, s).ok());
      EXPECT_TRUE(report(b, one, s).ok());
    }
    EXPECT_TRUE(checkpoint(a, one, 2).ok());
    EXPECT_TRUE(checkpoint(b, one, 2).ok());
    return {a, b, one};
  }
  grpc::Status checkpoint(const std::string& id, uint64_t attempt, uint64_t step) {
    v1::CommitCheckpointRequest q;
    q.set_worker_id(id);
    q.set_attempt(attempt);
    q.set_step(step);
    q.set_path("ckpt-" + std::to_string(step) + "-" + id);
    q.set_digest(std::string(64, 'a'));
    v1::CommitCheckpointResponse r;
    return job->CommitCheckpoint(q, &r);
  }
  v1::JobStatus status() const {
    v1::JobStatus s;
    job->GetStatus(&s);
    return s;
  }
};

TEST(Job, GangFormsWhenWorldSizeRegisteredRanksByArrival) {
  Fixture f(3);
  EXPECT_EQ(f.job->total_steps(), 2u * 4);  // 20 samples / global 6 -> 4 steps per epoch, 2 epochs
  const auto a = f.add("a"), b = f.add("b");
  EXPECT_EQ(f.status().state(), v1::REGISTERING);
  v1::WaitForGangResponse r;
  EXPECT_EQ(f.wait(a, &r).error_code(), StatusCode::DEADLINE_EXCEEDED);
  const auto c = f.add("c");
  EXPECT_EQ(f.status().state(), v1::RUNNING);
  const auto gb = f.gang(b);
  EXPECT_EQ(gb.rank(), 1u);
  EXPECT_EQ(gb.world_size(), 3u);
  EXPECT_EQ(gb.attempt(), 1u);
  EXPECT_EQ(gb.rendezvous_prefix(), "job/1/");
  EXPECT_EQ(gb.resume_step(), 0u);
  EXPECT_EQ(gb.gradient_accumulation_steps(), 2u);
  EXPECT_EQ(f.gang(c).rank(), 2u);
  EXPECT_EQ(f.wait(f.add("d"), &r).error_code(), StatusCode::DEADLINE_EXCEEDED);  // a spare
}

TEST(Job, StreamMatchesThePlanAndRunsAtMostTwoStepsAhead) {
  Fixture f(2);
  const auto a = f.add(), b = f.add();
  const uint64_t attempt = f.gang(a).attempt();
  v1::StreamBatchesRequest q;
  q.set_worker_id(b);
  q.set_attempt(attempt);
  q.set_from_step(1);
  ASSERT_TRUE(f.job->OpenStream(q).ok());
  std::vector<v1::MicroBatch> got;
  for (uint64_t step = 1; step <= 2; ++step) {
    auto next = f.job->NextStep(q, step);
    ASSERT_EQ(next.batches.size(), 2u) << step;
    got.insert(got.end(), next.batches.begin(), next.batches.end());
  }
  auto early = f.job->NextStep(q, 3);  // two steps ahead of the last committed (0) at most
  EXPECT_TRUE(early.batches.empty());
  EXPECT_FALSE(early.end);
  const auto plan = EpochPlan::build(f.train, [&] {
    std::vector<uint32_t> l;
    for (size_t i = 0; i < 20; ++i) l.push_back(f.samples->length(i));
    return l;
  }(), 42, 0, {1, 2, 2});
  uint64_t step_tokens = 0;
  for (const auto& rank : plan.steps()[0].ranks)
    for (const auto& m : rank)
      for (size_t s : m) step_tokens += f.samples->length(s) - 1;
  for (int m = 0; m < 2; ++m) {
    const auto& batch = got[static_cast<size_t>(m)];
    EXPECT_EQ(batch.step(), 1u);
    EXPECT_EQ(batch.micro_step(), static_cast<uint32_t>(m));
    EXPECT_EQ(batch.step_loss_tokens(), step_tokens);
    const auto& want = plan.steps()[0].ranks[1][static_cast<size_t>(m)];
    ASSERT_EQ(batch.sample_ids_size(), 1);
    EXPECT_EQ(batch.sample_ids(0), want[0]);
    EXPECT_EQ(batch.lengths(0), f.samples->length(want[0]));
    EXPECT_EQ(batch.token_ids(1), static_cast<int32_t>((want[0] * 31 + 1) % 32000));
    EXPECT_EQ(batch.loss_mask().size(), f.samples->length(want[0]));
  }
  const uint64_t version = f.job->WaitForChange(0, std::chrono::milliseconds(0));
  ASSERT_TRUE(f.report(a, attempt, 1).ok());
  bool committed = false;
  ASSERT_TRUE(f.report(b, attempt, 1, &committed).ok());
  EXPECT_TRUE(committed);
  EXPECT_NE(f.job->WaitForChange(version, std::chrono::milliseconds(0)), version);  // streams are told
  auto third = f.job->NextStep(q, 3);
  ASSERT_EQ(third.batches.size(), 2u);
  EXPECT_EQ(third.batches[0].step(), 3u);
  v1::OperatorResponse r;
  ASSERT_TRUE(f.job->Cancel(v1::CancelRequest(), &r).ok());
  auto ended = f.job->NextStep(q, 4);
  ASSERT_TRUE(ended.end);
  EXPECT_EQ(ended.end->error_code(), StatusCode::FAILED_PRECONDITION);  // the job is FAILED
}

TEST(Job, HeartbeatDeathRecoversFromTheLastCheckpointAndRefusesStaleAttempts) {
  Fixture f(2);
  const auto [a, b, one] = f.two_ranks_past_checkpoint_2();
  f.now += 8;
  ASSERT_TRUE(f.beat(a).ok());
  f.now += 5;  // b is 13 s silent, a 5 s
  f.job->tick();
  EXPECT_EQ(f.status().state(), v1::RECOVERING);
  EXPECT_NE(f.status().message().find("rank 1"), std::string::npos) << f.status().message();
  EXPECT_EQ(f.report(a, one, 4).error_code(), StatusCode::ABORTED);
  v1::HeartbeatResponse hr;
  ASSERT_TRUE(f.beat(a, &hr).ok());
  EXPECT_EQ(hr.state(), v1::RECOVERING);
  // b is dead: its calls say so.
  EXPECT_EQ(f.report(b, one, 4).error_code(), StatusCode::FAILED_PRECONDITION);

  const auto c = f.add("replacement");
  const auto g = f.gang(c);
  EXPECT_EQ(f.status().state(), v1::RUNNING);
  EXPECT_EQ(g.attempt(), 2u);
  EXPECT_EQ(g.rank(), 1u);
  EXPECT_EQ(g.resume_step(), 2u);
  EXPECT_EQ(g.resume_checkpoint(), "ckpt-2-" + a);
  EXPECT_EQ(f.status().committed_step(), 2u);  // step 3 is trained again
  auto stale = f.report(a, one, 3);
  EXPECT_EQ(stale.error_code(), StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(stale.error_message().find("stale attempt 1"), std::string::npos) << stale.error_message();
  EXPECT_TRUE(f.report(a, 2, 3).ok());
}

TEST(Job, AReportedCollectiveFailureStartsANewAttemptOfTheLiveWorkers) {
  Fixture f(2);
  const auto [a, b, one] = f.two_ranks_past_checkpoint_2();
  v1::ReportFailureRequest q;
  q.set_worker_id(b);
  q.set_attempt(one);
  q.set_reason("all_gather on rank 1 of 2 (attempt 1) did not finish within 300 s");
  ASSERT_TRUE(f.job->ReportFailure(q).ok());
  EXPECT_EQ(f.status().state(), v1::RECOVERING);
  EXPECT_NE(f.status().message().find("rank 1"), std::string::npos) << f.status().message();
  EXPECT_NE(f.status().message().find("did not finish within 300 s"), std::string::npos);
  q.set_worker_id(a);  // the other rank's report: the attempt is over already
  EXPECT_EQ(f.job->ReportFailure(q).error_code(), StatusCode::ABORTED);
  f.now += 0.5;
  f.job->tick();
  EXPECT_EQ(f.status().state(), v1::RECOVERING);  // the grace period: a dead member would be noticed
  f.now += 0.6;
  f.job->tick();
  EXPECT_EQ(f.status().state(), v1::RUNNING);
  const auto g = f.gang(a, one);
  EXPECT_EQ(g.attempt(), 2u);
  EXPECT_EQ(g.resume_step(), 2u);
  EXPECT_EQ(f.status().committed_step(), 2u);
  EXPECT_EQ(f.job->ReportFailure(q).error_code(), StatusCode::FAILED_PRECONDITION);  // attempt 1 is stale
  q.set_reason(std::string(2000, 'x'));
  EXPECT_EQ(f.job->ReportFailure(q).error_code(), StatusCode::INVALID_ARGUMENT);
}

TEST(Job, FewerWorkersKeepTheGlobalBatchByRaisingAccumulation) {
  Fixture f(4);
  f.settings.min_workers = 2;
  f.reopen({});
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(f.add());
  auto beat_three = [&] {
    for (size_t i = 0; i < 3; ++i) ASSERT_TRUE(f.beat(ids[i]).ok());
  };
  f.now += 5;
  beat_three();
  f.now += 6;
  f.job->tick();  // worker 3 is dead
  EXPECT_EQ(f.status().state(), v1::RECOVERING);
  f.now += 29;
  beat_three();
  f.job->tick();
  EXPECT_EQ(f.status().state(), v1::RECOVERING);  // still waiting for a replacement
  f.now += 2;
  f.job->tick();
  ASSERT_EQ(f.status().state(), v1::RUNNING);
  // Global batch 8 = 1 x accumulation x world: 3 workers cannot keep it, 2 can.
  const auto g = f.gang(ids[0]);
  EXPECT_EQ(g.world_size(), 2u);
  EXPECT_EQ(g.gradient_accumulation_steps(), 4u);
  v1::WaitForGangResponse r;
  EXPECT_EQ(f.wait(ids[2], &r).error_code(), StatusCode::DEADLINE_EXCEEDED);
}

// Three workers, min_workers 2 (global batch 6: 2 ranks at accumulation 3): worker
// 2 dies and is not replaced within replacement_timeout_s, so the gang shrinks to
// ranks 0 and 1, which train steps 1..`steps`.
struct Shrunk {
  Fixture f{3};
  std::vector<std::string> ids;
  uint64_t attempt = 0;

  explicit Shrunk(uint64_t steps, bool regrow = true) {
    f.settings.min_workers = 2;
    f.settings.regrow = regrow;
    f.settings.regrow_after_s = 20;
    f.reopen({});
    for (int i = 0; i < 3; ++i) ids.push_back(f.add());
    f.now += 11;
    beat();
    f.job->tick();  // worker 2 missed its heartbeats: RECOVERING
    f.now += 31;
    beat();
    f.job->tick();  // no replacement within 30 s: a gang of 2
    const auto g = f.gang(ids[0]);
    EXPECT_EQ(g.world_size(), 2u);
    EXPECT_EQ(g.reason(), "shrink");
    attempt = g.attempt();
    for (uint64_t s = 1; s <= steps; ++s) report_both(s);
  }
  void beat() {
    for (size_t i = 0; i < 2; ++i) ASSERT_TRUE(f.beat(ids[i]).ok());
  }
  // Time passes by `steps` seconds, the ranks and `spare` heartbeating after each.
  void pass(std::initializer_list<double> steps, const std::string& spare) {
    for (double dt : steps) {
      f.now += dt;
      beat();
      ASSERT_TRUE(f.beat(spare).ok());
    }
  }
  void report_both(uint64_t step) {
    for (size_t i = 0; i < 2; ++i) ASSERT_TRUE(f.report(ids[i], attempt, step).ok()) << step;
  }
  // Whether rank `i`'s batches of `step` end the attempt.
  bool ends(size_t i, uint64_t step) {
    v1::StreamBatchesRequest q;
    q.set_worker_id(ids[i]);
    q.set_attempt(attempt);
    q.set_from_step(step);
    const auto next = f.job->NextStep(q, step);
    EXPECT_FALSE(next.batches.empty()) << step;
    return !next.batches.empty() && next.batches.front().attempt_ends();
  }
};

TEST(Job, ASpareRegrowsTheGangAtTheCheckpointOfAStepNoRankWasStreamed) {
  Shrunk s(3);
  const auto spare = s.f.add("returned");
  s.pass({9, 10}, spare);  // the spare has been alive 19 s of the 20 it needs
  s.f.job->tick();
  EXPECT_EQ(s.f.status().regrow_step(), 0u);
  EXPECT_EQ(s.f.status().spares(), 1u);
  s.f.now += 2;
  s.beat();
  ASSERT_TRUE(s.f.beat(spare).ok());
  s.f.job->tick();
  // Committed step 3, streams at most 2 ahead: step 6 is the first no rank can have read.
  ASSERT_EQ(s.f.status().regrow_step(), 6u);
  EXPECT_EQ(s.f.status().state(), v1::RUNNING);
  EXPECT_NE(s.f.status().message().find("regrowing from 2 to 3 workers at step 6"), std::string::npos);
  for (uint64_t step = 4; step <= 6; ++step) {
    for (size_t i = 0; i < 2; ++i) EXPECT_EQ(s.ends(i, step), step == 6) << step;
    s.report_both(step);
  }
  ASSERT_TRUE(s.f.checkpoint(s.ids[0], s.attempt, 6).ok());
  EXPECT_EQ(s.f.status().attempt(), s.attempt);  // until every rank's share
  ASSERT_TRUE(s.f.checkpoint(s.ids[1], s.attempt, 6).ok());
  const auto g = s.f.gang(spare);
  EXPECT_EQ(g.attempt(), s.attempt + 1);
  EXPECT_EQ(g.reason(), "regrow");
  EXPECT_EQ(g.world_size(), 3u);
  EXPECT_EQ(g.rank(), 2u);
  EXPECT_EQ(g.gradient_accumulation_steps(), 2u);  // the global batch 6 again: 1 x 2 x 3
  EXPECT_EQ(g.resume_step(), 6u);
  EXPECT_EQ(s.f.gang(s.ids[0], s.attempt).rank(), 0u);
  const auto st = s.f.status();
  EXPECT_EQ(st.attempt_reason(), "regrow");
  EXPECT_EQ(st.regrow_step(), 0u);
  EXPECT_EQ(st.spares(), 0u);
  EXPECT_EQ(st.checkpoint_step(), 6u);
  EXPECT_EQ(st.committed_step(), 6u);
}

TEST(Job, RegrowFalseKeepsTheSmallerGangAndItsSpares) {
  Shrunk s(3, /*regrow=*/false);
  const auto spare = s.f.add("returned");
  s.pass({9, 9, 9}, spare);
  s.f.job->tick();
  EXPECT_EQ(s.f.status().regrow_step(), 0u);
  EXPECT_EQ(s.f.status().spares(), 1u);
  EXPECT_FALSE(s.ends(0, 4));
}

TEST(Job, AWorkerThatArrivesDuringTheStopForRegrowJoinsTheLargerGang) {
  // World 6, global batch 12 (gangs of 6, 4, 3 or 2 keep it), min 2: four workers die and
  // two go on. One returns: a regrow to 3 is asked; a second arrives while the gang stops,
  // and the gang formed at the checkpoint is 4.
  Fixture f(6);
  f.settings.min_workers = 2;
  f.settings.regrow_after_s = 0;
  f.reopen({});
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) ids.push_back(f.add());
  for (double dt : {11.0, 31.0}) {
    f.now += dt;
    for (size_t i = 0; i < 2; ++i) ASSERT_TRUE(f.beat(ids[i]).ok());
    f.job->tick();  // four dead; then no replacement in time: a gang of 2
  }
  const uint64_t one = f.gang(ids[0]).attempt();
  ASSERT_EQ(f.status().gang_size(), 2u);
  ids.push_back(f.add("back-1"));
  f.job->tick();
  ASSERT_EQ(f.status().regrow_step(), 3u);
  EXPECT_NE(f.status().message().find("from 2 to 3 workers"), std::string::npos) << f.status().message();
  ids.push_back(f.add("back-2"));  // during the stop
  for (uint64_t step = 1; step <= 3; ++step) {
    for (size_t i = 0; i < 2; ++i) ASSERT_TRUE(f.report(ids[i], one, step).ok());
  }
  for (size_t i = 0; i < 2; ++i) ASSERT_TRUE(f.checkpoint(ids[i], one, 3).ok());
  const auto g = f.gang(ids[7], one);
  EXPECT_EQ(g.reason(), "regrow");
  EXPECT_EQ(g.world_size(), 4u);
  EXPECT_EQ(g.rank(), 3u);
  EXPECT_EQ(g.gradient_accumulation_steps(), 3u);  // 12 = 1 x 3 x 4
  EXPECT_EQ(g.resume_step(), 3u);
  EXPECT_EQ(f.status().spares(), 0u);
}

TEST(Job, AFailureDuringTheStopForRegrowRecoversWithTheSpares) {
  Shrunk s(3);
  const auto spare = s.f.add("returned");
  s.pass({9, 9, 3}, spare);
  s.f.job->tick();
  ASSERT_EQ(s.f.status().regrow_step(), 6u);
  s.report_both(4);
  // Rank 1's collective fails before the regrow step: the whole live set forms the next gang.
  v1::ReportFailureRequest q;
  q.set_worker_id(s.ids[1]);
  q.set_attempt(s.attempt);
  q.set_reason("all_reduce timed out");
  ASSERT_TRUE(s.f.job->ReportFailure(q).ok());
  s.f.now += 1.5;
  s.f.job->tick();
  const auto g = s.f.gang(spare);
  EXPECT_EQ(g.reason(), "failure");
  EXPECT_EQ(g.world_size(), 3u);
  EXPECT_EQ(g.resume_step(), 0u);  // no checkpoint yet: steps 1..4 are trained again
  EXPECT_EQ(s.f.status().regrow_step(), 0u);
  EXPECT_EQ(s.f.status().committed_step(), 0u);
}

TEST(Job, AWorkerThatCannotGoOnLeavesAndIsDeadAtOnce) {
  Fixture f(2);
  const auto [a, b, one] = f.two_ranks_past_checkpoint_2();
  v1::ReportFailureRequest q;
  q.set_worker_id(b);
  q.set_attempt(0);  // any attempt: a worker may leave before its first gang
  q.set_reason("cannot load the base model");
  q.set_leaving(true);
  ASSERT_TRUE(f.job->ReportFailure(q).ok());
  const auto st = f.status();
  EXPECT_EQ(st.state(), v1::RECOVERING);
  EXPECT_NE(st.message().find("left: cannot load the base model"), std::string::npos) << st.message();
  EXPECT_EQ(st.registered_workers(), 1u);
  EXPECT_EQ(f.job->ReportFailure(q).error_code(), StatusCode::FAILED_PRECONDITION);  // dead already
  const auto c = f.add("replacement");
  EXPECT_EQ(f.gang(c).resume_step(), 2u);
  // A spare that leaves changes nothing but the count.
  const auto d = f.add("spare");
  q.set_worker_id(d);
  ASSERT_TRUE(f.job->ReportFailure(q).ok());
  EXPECT_EQ(f.status().state(), v1::RUNNING);
  EXPECT_EQ(f.status().spares(), 0u);
}

TEST(Job, JournalRestartResumesAndLineageDropsRolledBackSteps) {
  const auto dir = std::filesystem::temp_directory_path() / ("herd-job-test-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  const auto file = dir / "journal.log";
  Fixture f(2, 20, file);
  auto a = f.add(), b = f.add();
  for (uint64_t s = 1; s <= 3; ++s) {
    ASSERT_TRUE(f.report(a, 1, s).ok());
    ASSERT_TRUE(f.report(b, 1, s).ok());
  }
  ASSERT_TRUE(f.checkpoint(a, 1, 2).ok());
  ASSERT_TRUE(f.checkpoint(b, 1, 2).ok());
  f.reopen(file);  // the coordinator restarts
  EXPECT_EQ(f.status().state(), v1::REGISTERING);
  EXPECT_EQ(f.status().committed_step(), 2u);
  EXPECT_EQ(f.status().checkpoint_step(), 2u);
  auto s = f.beat(a);
  EXPECT_EQ(s.error_code(), StatusCode::NOT_FOUND);
  EXPECT_NE(s.error_message().find("earlier run"), std::string::npos) << s.error_message();
  a = f.add();
  b = f.add();
  const auto g = f.gang(a);
  EXPECT_EQ(g.attempt(), 2u);
  EXPECT_EQ(g.resume_step(), 2u);
  ASSERT_TRUE(f.report(a, 2, 3).ok());
  ASSERT_TRUE(f.report(b, 2, 3).ok());

  Journal journal(file);
  const auto lineage = trained_samples(journal.records());
  ASSERT_EQ(lineage.size(), 3u);
  std::set<uint64_t> seen;
  for (const auto& [step, ids] : lineage) {
    EXPECT_EQ(ids.size(), 4u);
    for (auto id : ids) EXPECT_TRUE(seen.insert(id).second) << "sample " << id << " twice";
  }
  // The same journal under another plan is refused.
  f.job.reset();
  f.settings.gradient_accumulation_steps = 4;
  EXPECT_THROW(f.reopen(file), JournalError);
  std::filesystem::remove_all(dir);
}

// Four workers on threads of their own call one Job at once, as gRPC's threads do
// (heartbeats, streams, reports, checkpoint commits, the reaper's tick, status
// reads): the job ends DONE with every sample of both epochs once in the journal.
// Under TSan (scripts/test --tsan) this is the coordinator's state machine with
// every access instrumented.
TEST(Job, ARestartedCoordinatorWithFewerWorkersShrinksAfterTheReplacementWaitThenRegrows) {
  const auto dir = std::filesystem::temp_directory_path() / ("herd-job-shrink-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  const auto file = dir / "journal.log";
  Fixture f(2, 20, file);
  f.settings.min_workers = 1;
  f.settings.regrow_after_s = 5;
  f.reopen(file);
  auto a = f.add(), b = f.add();
  const uint64_t one = f.gang(a).attempt();
  for (uint64_t s = 1; s <= 2; ++s) {
    ASSERT_TRUE(f.report(a, one, s).ok());
    ASSERT_TRUE(f.report(b, one, s).ok());
  }
  ASSERT_TRUE(f.checkpoint(a, one, 2).ok());
  ASSERT_TRUE(f.checkpoint(b, one, 2).ok());
  f.reopen(file);  // the coordinator restarts; one worker comes back
  a = f.add();
  f.now += 29;
  ASSERT_TRUE(f.beat(a).ok());
  f.job->tick();
  EXPECT_EQ(f.status().state(), v1::REGISTERING);  // waiting for the other
  f.now += 2;
  ASSERT_TRUE(f.beat(a).ok());
  f.job->tick();
  const auto g = f.gang(a);
  EXPECT_EQ(g.reason(), "shrink");
  EXPECT_EQ(g.world_size(), 1u);
  EXPECT_EQ(g.gradient_accumulation_steps(), 4u);
  EXPECT_EQ(g.resume_step(), 2u);
  b = f.add();  // back later: a spare, then the gang of 2 again at a checkpoint
  f.now += 6;
  ASSERT_TRUE(f.beat(a).ok());
  ASSERT_TRUE(f.beat(b).ok());
  f.job->tick();
  EXPECT_EQ(f.status().regrow_step(), 5u);
  std::filesystem::remove_all(dir);
}

TEST(Job, AFreshJobWaitsForItsWholeWorldSize) {
  Fixture f(2);
  f.settings.min_workers = 1;
  f.reopen({});
  const auto a = f.add();
  f.now += 5;
  ASSERT_TRUE(f.beat(a).ok());
  f.now += 5;
  ASSERT_TRUE(f.beat(a).ok());
  f.now += 25;  // past the replacement timeout: no gang ever formed, none to shrink
  ASSERT_TRUE(f.beat(a).ok());
  f.job->tick();
  EXPECT_EQ(f.status().state(), v1::REGISTERING);
}

TEST(Job, ConcurrentCallsFromEveryWorkerAndTheReaperEndDoneAndExactlyOnce) {
  const auto dir = std::filesystem::temp_directory_path() / ("herd-job-threads-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  Fixture f(4, 40);
  f.settings.gradient_accumulation_steps = 1;
  f.job = std::make_unique<Job>(f.settings, f.samples, f.train, dir / "journal.log");  // the steady clock
  std::atomic<bool> over{false};
  std::vector<std::thread> threads;
  std::atomic<int> finished{0};
  for (int w = 0; w < 4; ++w) {
    threads.emplace_back([&, w] {
      const std::string id = f.add(fmt::format("h{}", w));
      std::thread heartbeat([&] {
        while (!over) {
          f.beat(id);
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
      });
      const auto g = f.gang(id);
      v1::StreamBatchesRequest q;
      q.set_worker_id(id);
      q.set_attempt(g.attempt());
      q.set_from_step(1);
      EXPECT_TRUE(f.job->OpenStream(q).ok());
      for (uint64_t step = 1;; ++step) {
        auto next = f.job->NextStep(q, step);
        while (!next.end && next.batches.empty()) {
          f.job->WaitForChange(0, std::chrono::milliseconds(1));
          next = f.job->NextStep(q, step);
        }
        if (next.end) break;
        EXPECT_TRUE(f.report(id, g.attempt(), step).ok()) << step;
        if (step % 2 == 0 || step == g.total_steps()) {
          EXPECT_TRUE(f.checkpoint(id, g.attempt(), step).ok()) << step;
        }
      }
      ++finished;
      while (!over) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      heartbeat.join();
    });
  }
  std::thread reaper([&] {
    while (!over) {
      f.job->tick();
      v1::JobStatus s;
      f.job->GetStatus(&s);
      if (s.state() == v1::DONE && finished == 4) over = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  for (auto& t : threads) t.join();
  reaper.join();
  EXPECT_EQ(f.status().state(), v1::DONE);
  EXPECT_EQ(f.status().attempt(), 1u);
  std::map<uint64_t, int> trained;
  for (const auto& [step, ids] : trained_samples(Journal(dir / "journal.log").records())) {
    for (auto id : ids) ++trained[id];
  }
  ASSERT_EQ(trained.size(), 40u);
  for (const auto& [id, n] : trained) EXPECT_EQ(n, 2) << "sample " << id;  // once an epoch
  std::filesystem::remove_all(dir);
}

// A worker whose config differs from the job's in a key ranks share is refused at
// registration, naming the keys; nothing of it joins the roster.
TEST(Job, AWorkerWithAnotherConfigIsRefusedAtRegistration) {
  Fixture f;
  f.settings.shared = {{"lora.r", "8"}, {"trainer.learning_rate", "0.01"}};
  f.reopen({});
  v1::RegisterRequest q;
  q.set_job_id("job");
  q.set_host("h");
  (*q.mutable_settings())["lora.r"] = "16";
  (*q.mutable_settings())["trainer.learning_rate"] = "0.01";
  (*q.mutable_settings())["trainer.seed"] = "7";
  v1::RegisterResponse r;
  const auto refused = f.job->Register(q, &r);
  EXPECT_EQ(refused.error_code(), StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(refused.error_message(),
            "this worker's config is not the job's: lora.r is 16 there, 8 in the job; trainer.seed is 7 there, "
            "(unset) in the job. Start it with the job's config, or with no CONFIG to take the coordinator's");
  EXPECT_TRUE(r.worker_id().empty());
  q.mutable_settings()->erase("trainer.seed");
  (*q.mutable_settings())["lora.r"] = "8";
  EXPECT_TRUE(f.job->Register(q, &r).ok());
  q.clear_settings();  // a simulated worker: not checked
  EXPECT_TRUE(f.job->Register(q, &r).ok());
  EXPECT_EQ(f.status().ranks_size(), 2);  // the gang: these two
}

// A checkpoint is committed only under the job's trainer_output_dir, as the
// worker's own checkpoint-STEP: no call makes the coordinator read another path.
TEST(Job, ACheckpointPathOutsideTheJobsDirectoryIsRefused) {
  Fixture f;
  f.settings.checkpoint_root = "/jobs/t/trainer";
  f.reopen({});
  const auto a = f.add(), b = f.add();
  const uint64_t one = f.gang(a).attempt();
  ASSERT_TRUE(f.report(a, one, 1).ok());
  ASSERT_TRUE(f.report(b, one, 1).ok());
  v1::CommitCheckpointRequest q;
  q.set_worker_id(a);
  q.set_attempt(one);
  q.set_step(1);
  q.set_digest(std::string(64, 'a'));
  v1::CommitCheckpointResponse r;
  for (const char* path : {"/etc", "/jobs/t/trainer/checkpoint-1/../../../../etc", "/jobs/t/trainer/checkpoint-2",
                           "jobs/t/trainer/checkpoint-1"}) {
    q.set_path(path);
    const auto s = f.job->CommitCheckpoint(q, &r);
    EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT) << path;
    EXPECT_EQ(s.error_message(),
              "path must be /jobs/t/trainer/checkpoint-1 (the job's trainer_output_dir, as its config gives it)");
  }
  q.set_path("/jobs/t/trainer/checkpoint-1");
  EXPECT_TRUE(f.job->CommitCheckpoint(q, &r).ok());
}

// A journal that cannot be written (a full disk) stops the job where its last
// durable record left it: nothing it lacks is answered, and a restart with space
// resumes from it.
TEST(Job, AJournalWriteFailureStopsTheJobAtItsLastDurableRecord) {
  const auto dir = std::filesystem::temp_directory_path() / ("herd-job-full-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  const auto file = dir / "journal.log";
  Fixture f(2, 20, file);
  auto [a, b, one] = f.two_ranks_past_checkpoint_2();
  ASSERT_TRUE(f.report(a, one, 4).ok());
  try {
    herd::testing::FileSizeLimit full(std::filesystem::file_size(file));
    f.report(b, one, 4);  // completes step 4: its record cannot be written
    FAIL() << "a step the journal lacks must not be answered";
  } catch (const JournalError& e) {
    EXPECT_NE(std::string(e.what()).find("write failed: File too large"), std::string::npos) << e.what();
  }
  const auto s = f.status();
  EXPECT_EQ(s.state(), v1::FAILED);
  EXPECT_EQ(s.committed_step(), 3u);
  EXPECT_NE(s.message().find("cannot write the journal, so the job stopped at its last durable record (committed "
                             "step 3, checkpoint 2)"),
            std::string::npos)
      << s.message();
  v1::HeartbeatResponse told;
  ASSERT_TRUE(f.beat(a, &told).ok());
  EXPECT_EQ(told.state(), v1::FAILED);
  EXPECT_EQ(f.checkpoint(a, one, 4).error_code(), StatusCode::FAILED_PRECONDITION);

  f.reopen(file);  // restarted with space: the failure was never journaled
  EXPECT_EQ(f.status().state(), v1::REGISTERING);
  EXPECT_EQ(f.status().checkpoint_step(), 2u);
  a = f.add();
  b = f.add();
  EXPECT_EQ(f.gang(a).resume_step(), 2u);
  std::filesystem::remove_all(dir);
}

// data.packing: rows of several samples, each sample of an epoch streamed once and
// journaled once, in rows that fit the window with the samples' own tokens.
TEST(Job, PackedRowsStreamEverySampleOfAnEpochOnce) {
  const auto dir = std::filesystem::temp_directory_path() / ("herd-job-pack-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  const auto file = dir / "journal.log";
  Fixture f(2, 40);
  f.settings.pack_window = 24;  // samples of 4..12 tokens: two to five a row
  f.reopen(file);
  const size_t rows = f.job->rows_per_epoch();
  EXPECT_LT(rows, 40u);
  EXPECT_EQ(f.job->steps_per_epoch(), (rows + 3) / 4);  // global batch: 4 rows
  uint64_t tokens = 0;
  for (size_t s = 0; s < 40; ++s) tokens += f.samples->length(s);
  EXPECT_DOUBLE_EQ(f.job->packing_efficiency(), static_cast<double>(tokens) / static_cast<double>(rows * 24));
  EXPECT_EQ(f.job->packing_summary(),
            fmt::format("packing: 40 samples in {} rows of 24 tokens, {:.1f}% full", rows,
                        100.0 * static_cast<double>(tokens) / static_cast<double>(rows * 24)));

  const std::string ids[2] = {f.add(), f.add()};
  const uint64_t attempt = f.gang(ids[0]).attempt();
  v1::StreamBatchesRequest q[2];
  for (int r = 0; r < 2; ++r) {
    q[r].set_worker_id(ids[r]);
    q[r].set_attempt(attempt);
    q[r].set_from_step(1);
    ASSERT_TRUE(f.job->OpenStream(q[r]).ok());
  }
  std::map<uint64_t, std::vector<uint64_t>> streamed;  // epoch -> samples
  for (uint64_t step = 1; step <= f.job->total_steps(); ++step) {
    uint64_t step_predicted = 0, loss_tokens = 0;
    for (int r = 0; r < 2; ++r) {
      const auto next = f.job->NextStep(q[r], step);
      ASSERT_EQ(next.batches.size(), 2u);
      for (const auto& b : next.batches) {
        loss_tokens = b.step_loss_tokens();
        if (b.sample_ids_size() == 0) continue;
        const int width = b.token_ids_size() / b.row_samples_size();
        int sample = 0;
        for (int row = 0; row < b.row_samples_size(); ++row) {
          int at = row * width;
          for (uint32_t k = 0; k < b.row_samples(row); ++k, ++sample) {
            const uint64_t id = b.sample_ids(sample);
            ASSERT_EQ(b.lengths(sample), f.samples->length(id));
            for (uint32_t j = 0; j < b.lengths(sample); ++j) {
              ASSERT_EQ(b.token_ids(at + static_cast<int>(j)), static_cast<int32_t>((id * 31 + j) % 32000));
            }
            at += static_cast<int>(b.lengths(sample));
            step_predicted += b.lengths(sample) - 1;
            streamed[b.epoch()].push_back(id);
          }
          ASSERT_LE(at - row * width, 24);
          for (int p = at; p < (row + 1) * width; ++p) EXPECT_EQ(b.loss_mask()[static_cast<size_t>(p)], 0) << p;
        }
        EXPECT_EQ(sample, b.sample_ids_size());
      }
    }
    EXPECT_EQ(loss_tokens, step_predicted) << "step " << step;  // the normaliser counts every sample's targets
    ASSERT_TRUE(f.report(ids[0], attempt, step).ok());
    ASSERT_TRUE(f.report(ids[1], attempt, step).ok());
  }
  ASSERT_EQ(streamed.size(), 2u);
  for (auto& [epoch, samples] : streamed) {
    std::sort(samples.begin(), samples.end());
    EXPECT_EQ(samples, std::vector<uint64_t>(f.train.begin(), f.train.end())) << "epoch " << epoch;
  }
  Journal journal(file);
  std::map<uint64_t, int> journaled;
  for (const auto& [step, samples] : trained_samples(journal.records())) {
    for (auto id : samples) ++journaled[id];
  }
  ASSERT_EQ(journaled.size(), 40u);
  for (const auto& [id, n] : journaled) EXPECT_EQ(n, 2) << "sample " << id;  // once an epoch
  f.job.reset();
  std::filesystem::remove_all(dir);
}

TEST(Job, RendezvousStoreIsScopedToTheAttempt) {
  Fixture f(2);
  const auto a = f.add(), b = f.add();
  v1::KvSetRequest set;
  set.set_worker_id(a);
  set.set_attempt(1);
  set.set_key("nccl/unique_id");
  set.set_value("id");
  ASSERT_TRUE(f.job->KvSet(set).ok());
  v1::KvGetRequest get;
  get.set_worker_id(b);
  get.set_attempt(1);
  get.set_key("nccl/unique_id");
  v1::KvGetResponse got;
  ASSERT_TRUE(f.job->KvGet(get, &got).ok());
  EXPECT_EQ(got.value(), "id");
  v1::KvWaitRequest wait;
  wait.set_worker_id(a);
  wait.set_attempt(1);
  wait.add_keys("nccl/unique_id");
  wait.add_keys("never");
  wait.set_timeout_ms(100);
  auto s = f.job->KvWait(wait, [] { return false; });
  EXPECT_EQ(s.error_code(), StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(s.error_message(), "keys not set in time: never");
  f.now += 11;
  f.job->tick();  // both dead; a new attempt starts empty
  EXPECT_EQ(f.job->KvGet(get, &got).error_code(), StatusCode::FAILED_PRECONDITION);
  f.add();
  get.set_worker_id(f.add());
  get.set_attempt(2);
  ASSERT_TRUE(f.job->KvGet(get, &got).ok());
  EXPECT_FALSE(got.found());
}

TEST(Job, DrainStopsAtTheNextCheckpointCancelFails) {
  Fixture f(1);
  const auto a = f.add();
  v1::OperatorResponse r;
  ASSERT_TRUE(f.job->Drain(&r).ok());
  EXPECT_EQ(r.state(), v1::DRAINING);
  ASSERT_TRUE(f.report(a, 1, 1).ok());
  ASSERT_TRUE(f.checkpoint(a, 1, 1).ok());
  EXPECT_EQ(f.status().state(), v1::STOPPED);
  EXPECT_EQ(f.status().message(), "drained at checkpoint 1");
  Fixture g(1);
  g.add();
  v1::CancelRequest c;
  c.set_reason("bad data");
  ASSERT_TRUE(g.job->Cancel(c, &r).ok());
  EXPECT_EQ(g.status().state(), v1::FAILED);
  EXPECT_EQ(g.status().message(), "cancelled: bad data");
  v1::RegisterRequest q;
  q.set_job_id("job");
  q.set_host("h");
  v1::RegisterResponse rr;
  EXPECT_EQ(g.job->Register(q, &rr).error_code(), StatusCode::FAILED_PRECONDITION);
}

TEST(Job, DrainingAMemberThatReportedItsCheckpointMayLeaveFirst) {
  Fixture f;
  auto [a, b, one] = f.two_ranks_past_checkpoint_2();
  v1::OperatorResponse r;
  ASSERT_TRUE(f.job->Drain(&r).ok());
  ASSERT_TRUE(f.checkpoint(b, one, 3).ok());
  v1::StreamBatchesRequest stream;
  stream.set_worker_id(b);
  stream.set_attempt(one);
  f.job->StreamLost(stream, "dropped its batch stream");  // b is done and exits
  EXPECT_EQ(f.status().state(), v1::DRAINING);
  ASSERT_TRUE(f.checkpoint(a, one, 3).ok());
  EXPECT_EQ(f.status().state(), v1::STOPPED);
  EXPECT_EQ(f.status().checkpoint_step(), 3u);
  // One that has not reported it is lost: the job stops at the last checkpoint.
  Fixture g;
  auto [c, d, attempt] = g.two_ranks_past_checkpoint_2();
  ASSERT_TRUE(g.job->Drain(&r).ok());
  stream.set_worker_id(d);
  stream.set_attempt(attempt);
  g.job->StreamLost(stream, "dropped its batch stream");
  EXPECT_EQ(g.status().state(), v1::STOPPED);
  EXPECT_EQ(g.status().checkpoint_step(), 2u);
}

TEST(Job, DoneWhenTheLastStepsCheckpointIsCommittedAndTheSpareIsToldByItsHeartbeat) {
  Fixture f(1, 4);
  f.settings.num_train_epochs = 1;
  f.reopen({});
  const auto a = f.add(), spare = f.add();
  ASSERT_EQ(f.job->total_steps(), 2u);  // 4 samples, global batch 2
  ASSERT_TRUE(f.report(a, 1, 1).ok());
  ASSERT_TRUE(f.report(a, 1, 2).ok());
  EXPECT_EQ(f.status().state(), v1::RUNNING);
  ASSERT_TRUE(f.beat(spare).ok());
  EXPECT_FALSE(f.job->everyone_told());  // not ended
  ASSERT_TRUE(f.checkpoint(a, 1, 2).ok());
  EXPECT_EQ(f.status().state(), v1::DONE);
  EXPECT_FALSE(f.job->everyone_told());  // a knows (it committed the last checkpoint); the spare does not yet
  v1::HeartbeatResponse r;
  ASSERT_TRUE(f.beat(spare, &r).ok());
  EXPECT_EQ(r.state(), v1::DONE);
  EXPECT_TRUE(f.job->everyone_told());
}

TEST(Job, ACancelledJobsMembersAreToldByTheirStreamOrByDyingSilent) {
  Fixture f(2);
  const auto a = f.add();
  f.add();  // b: silent from here on
  f.now += 8;
  ASSERT_TRUE(f.beat(a).ok());
  v1::OperatorResponse r;
  ASSERT_TRUE(f.job->Cancel(v1::CancelRequest(), &r).ok());
  v1::StreamBatchesRequest q;
  q.set_worker_id(a);
  q.set_attempt(1);
  ASSERT_TRUE(f.job->NextStep(q, 1).end);  // a's stream ends: a knows
  EXPECT_FALSE(f.job->everyone_told());    // b does not
  f.now += 3;
  f.job->tick();  // b missed its heartbeats (11 s), a has not (3 s): the dead need not be told
  EXPECT_TRUE(f.job->everyone_told());
}

}  // namespace
}  // namespace herd::coordinator
