// The coordinator over real gRPC on loopback, driven by simulated workers: gang
// formation, failures and recovery, a coordinator killed with SIGKILL, the token,
// TLS, malformed requests, and the exactly-once sample log.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <numeric>
#include <set>
#include <thread>
#include <tuple>

#include <fmt/format.h>
#include <google/protobuf/descriptor.h>
#include <grpcpp/generic/generic_stub.h>

#include "client/gang_loop.h"
#include "client/sim_worker.h"
#include "common/auth.h"
#include "common/gang_error.h"
#include "common/protocol_limits.h"
#include "coordinator/job.h"
#include "coordinator/service.h"

namespace herd::coordinator {
namespace {

namespace fs = std::filesystem;
namespace v1 = herd::v1;
using client::make_channel;
using client::prepare;
using client::scrape_metrics;
using client::SimWorker;
using client::SimWorkerOptions;
using client::TrainedStep;
using grpc::StatusCode;
constexpr const char* kToken = "s3cret-job-token";

bool wait_until(const std::function<bool()>& done, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return done();
}

fs::path temp_dir(const std::string& name) {
  auto d = fs::temp_directory_path() / fmt::format("herd-coord-{}-{}", name, ::getpid());
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

JobSettings settings(uint32_t world, double heartbeat_timeout = 2) {
  JobSettings s;
  s.job_id = "itest";
  s.world_size = world;
  s.min_workers = world;
  s.batch_size = 1;
  s.gradient_accumulation_steps = 2;
  s.num_train_epochs = 2;
  s.heartbeat_timeout_s = heartbeat_timeout;
  s.replacement_timeout_s = 60;
  return s;
}

std::vector<size_t> all(size_t n) {
  std::vector<size_t> v(n);
  std::iota(v.begin(), v.end(), size_t{0});
  return v;
}

// A coordinator in this process on a free loopback port.
struct Served {
  std::shared_ptr<SyntheticSamples> samples;
  std::unique_ptr<Job> job;
  std::unique_ptr<CoordinatorServer> server;
  std::string address;

  Served(const JobSettings& s, size_t n, const fs::path& journal = {}, ServerOptions options = {}) {
    samples = std::make_shared<SyntheticSamples>(n, 8, 40, 1);
    job = std::make_unique<Job>(s, samples, all(n), journal);
    options.listen = "127.0.0.1:0";
    options.token = kToken;
    server = std::make_unique<CoordinatorServer>(*job, options);
    address = fmt::format("127.0.0.1:{}", server->port());
  }
  v1::JobStatus status() const {
    v1::JobStatus st;
    job->GetStatus(&st);
    return st;
  }
};

SimWorkerOptions worker_options(const std::string& address, const std::string& host, uint64_t checkpoint_every = 3) {
  SimWorkerOptions o;
  o.client.address = address;
  o.client.token = kToken;
  o.job_id = "itest";
  o.host = host;
  o.heartbeat_interval_s = 0.2;
  o.step_seconds = 0.02;
  o.checkpoint_every = checkpoint_every;
  return o;
}

// Per step, the samples of the latest attempt that trained it: what the model saw.
std::map<uint64_t, std::multiset<uint64_t>> lineage_from_workers(const std::vector<std::vector<TrainedStep>>& logs) {
  std::map<uint64_t, uint64_t> latest;
  for (const auto& log : logs)
    for (const auto& r : log) latest[r.step] = std::max(latest[r.step], r.attempt);
  std::map<uint64_t, std::multiset<uint64_t>> steps;
  for (const auto& log : logs)
    for (const auto& r : log)
      if (r.attempt == latest[r.step]) steps[r.step].insert(r.samples.begin(), r.samples.end());
  return steps;
}

// Every sample of every epoch once: the union over an epoch's steps is 0..n-1, each once.
void expect_each_sample_once_per_epoch(const std::map<uint64_t, std::multiset<uint64_t>>& steps, uint64_t total,
                                       uint64_t per_epoch, size_t n) {
  ASSERT_EQ(steps.size(), total);
  for (uint64_t e = 0; e * per_epoch < total; ++e) {
    std::multiset<uint64_t> epoch;
    for (uint64_t s = e * per_epoch + 1; s <= std::min(total, (e + 1) * per_epoch); ++s) {
      ASSERT_TRUE(steps.count(s)) << "step " << s << " never trained";
      epoch.insert(steps.at(s).begin(), steps.at(s).end());
    }
    std::multiset<uint64_t> want;
    for (size_t i = 0; i < n; ++i) want.insert(i);
    EXPECT_EQ(epoch, want) << "epoch " << e;
  }
}

TEST(CoordinatorRpc, ThreeWorkersFormAGangAndFinish) {
  Served c(settings(3), 30);
  std::vector<std::unique_ptr<SimWorker>> workers;
  for (int i = 0; i < 3; ++i) {
    workers.push_back(std::make_unique<SimWorker>(worker_options(c.address, fmt::format("host-{}", i))));
    workers.back()->start();
  }
  ASSERT_TRUE(wait_until([&] { return c.status().state() == v1::DONE; }, 60)) << c.status().DebugString();
  ASSERT_TRUE(wait_until([&] { return workers[0]->finished() && workers[2]->finished(); }, 10));
  EXPECT_NE(workers[0]->outcome().find("DONE"), std::string::npos) << workers[0]->outcome();
  std::vector<std::vector<TrainedStep>> logs;
  for (auto& w : workers) logs.push_back(w->log());
  EXPECT_EQ(c.status().committed_step(), c.job->total_steps());
  expect_each_sample_once_per_epoch(lineage_from_workers(logs), c.job->total_steps(), c.job->steps_per_epoch(), 30);
}

TEST(CoordinatorRpc, ExactlyOnceThroughACrashAndAHang) {
  const auto dir = temp_dir("exactly-once");
  Served c(settings(2, 1.0), 40, dir / "journal.log");
  std::vector<std::unique_ptr<SimWorker>> workers;
  auto start = [&](const std::string& host) {
    auto o = worker_options(c.address, host);
    o.step_seconds = 0.05;
    workers.push_back(std::make_unique<SimWorker>(o));
    workers.back()->start();
  };
  start("a");
  start("b");
  // Failure 1: a crashes (its stream drops) in the middle of epoch 0.
  ASSERT_TRUE(wait_until([&] { return c.status().committed_step() >= 7; }, 60));
  workers[0]->crash();
  ASSERT_TRUE(wait_until([&] { return c.status().state() == v1::RECOVERING; }, 10)) << c.status().DebugString();
  EXPECT_NE(c.status().message().find("batch stream"), std::string::npos) << c.status().message();
  start("c");
  // Failure 2: b hangs (no heartbeats, connection open) in epoch 1.
  ASSERT_TRUE(wait_until([&] { return c.status().attempt() == 2 && c.status().committed_step() >= 14; }, 60))
      << c.status().DebugString();
  workers[1]->hang();
  ASSERT_TRUE(wait_until([&] { return c.status().state() == v1::RECOVERING; }, 10)) << c.status().DebugString();
  EXPECT_NE(c.status().message().find("heartbeats"), std::string::npos) << c.status().message();
  start("d");
  ASSERT_TRUE(wait_until([&] { return c.status().state() == v1::DONE; }, 90)) << c.status().DebugString();
  EXPECT_EQ(c.status().attempt(), 3u);

  std::vector<std::vector<TrainedStep>> logs;
  size_t trained = 0;
  for (auto& w : workers) {
    logs.push_back(w->log());
    trained += logs.back().size();
  }
  const uint64_t total = c.job->total_steps();
  EXPECT_GT(trained, 2 * total) << "the failures should have cost some steps";
  const auto from_workers = lineage_from_workers(logs);
  expect_each_sample_once_per_epoch(from_workers, total, c.job->steps_per_epoch(), 40);

  // The coordinator's own log says the same, step by step.
  c.server.reset();
  c.job.reset();
  Journal journal(dir / "journal.log");
  const auto from_journal = trained_samples(journal.records());
  ASSERT_EQ(from_journal.size(), total);
  for (const auto& [step, ids] : from_journal) {
    EXPECT_EQ(std::multiset<uint64_t>(ids.begin(), ids.end()), from_workers.at(step)) << "step " << step;
  }
  fs::remove_all(dir);
}

// A recipe that says what the gang loop asked of it: its collective breaks in one
// step of the first attempt, and it asks to stop (as a signal would) in the second.
class ScriptedRecipe final : public client::Recipe {
 public:
  uint64_t fail_at = 6, stop_after = 9;
  volatile std::sig_atomic_t stop = 0;
  std::vector<std::pair<uint64_t, uint64_t>> setups;   // (attempt, resume step)
  std::vector<std::pair<uint64_t, uint64_t>> trained;  // (attempt, step), as reported
  std::vector<uint64_t> checkpoints;
  std::vector<std::tuple<uint64_t, bool, uint64_t>> finished;
  int releases = 0;

  void setup(const client::Gang& gang) override {
    gang_ = gang;
    setups.emplace_back(gang.attempt, gang.resume_step);
  }
  void step(const std::vector<v1::MicroBatch>& batches, bool stop_requested, client::StepRecord& r) override {
    if (gang_.attempt == 1 && r.step == fail_at) throw GangError("rank 0 lost its peer");
    for (const auto& b : batches)
      for (uint32_t length : b.lengths()) r.rank_tokens += length;
    r.loss = 1.0 / static_cast<double>(r.step);
    r.stop = stop_requested;  // one rank: it agrees with itself
    if (gang_.attempt == 2 && r.step == stop_after) stop = 1;
  }
  void recorded(const client::StepRecord& r) override { trained.emplace_back(r.attempt, r.step); }
  client::CheckpointRef save_checkpoint(uint64_t step) override {
    checkpoints.push_back(step);
    return {fmt::format("ckpt/checkpoint-{}", step), std::string(64, 'a' + static_cast<char>(step % 6))};
  }
  void finish(uint64_t step, bool interrupted, uint64_t checkpoint) override {
    finished.emplace_back(step, interrupted, checkpoint);
  }
  void release() override { ++releases; }

 private:
  client::Gang gang_;
};

TEST(GangLoop, AScriptedRecipeThroughAFailedAttemptADrainAndACheckpointCadence) {
  Served c(settings(1), 24);  // 12 steps an epoch, 24 in all
  client::SessionOptions so;
  so.client = {c.address, kToken};
  so.job_id = "itest";
  so.heartbeat_interval_s = 0.2;
  client::WorkerSession session(so);
  ScriptedRecipe recipe;
  client::LoopOptions loop;
  loop.checkpoint_every = 4;
  loop.stop = &recipe.stop;
  std::vector<std::string> said;
  loop.say = [&](const std::string& line) { said.push_back(line); };

  EXPECT_EQ(client::run_gang_loop(session, recipe, loop), client::LoopEnd::kInterrupted);

  // The failed step ends attempt 1, which is reported: attempt 2 resumes from checkpoint 4.
  EXPECT_EQ(recipe.setups, (std::vector<std::pair<uint64_t, uint64_t>>{{1, 0}, {2, 4}}));
  std::vector<std::pair<uint64_t, uint64_t>> trained;
  for (uint64_t s = 1; s <= 5; ++s) trained.emplace_back(1, s);
  for (uint64_t s = 5; s <= 10; ++s) trained.emplace_back(2, s);
  EXPECT_EQ(recipe.trained, trained);
  ASSERT_EQ(said.size(), 1u);
  EXPECT_EQ(said[0], "attempt 1: rank 0 lost its peer; waiting for the next gang");
  // Every 4 steps, then the step every rank stopped after (the request came in step 9).
  EXPECT_EQ(recipe.checkpoints, (std::vector<uint64_t>{4, 8, 10}));
  EXPECT_EQ(recipe.finished, (std::vector<std::tuple<uint64_t, bool, uint64_t>>{{10, true, 10}}));
  EXPECT_EQ(recipe.releases, 2);
  const auto st = c.status();
  EXPECT_EQ(st.state(), v1::STOPPED);
  EXPECT_EQ(st.attempt(), 2u);
  EXPECT_EQ(st.committed_step(), 10u);
  EXPECT_EQ(st.checkpoint_step(), 10u);
}

TEST(CoordinatorRpc, StaleWorkerIsRefusedAfterRecovery) {
  Served c(settings(2, 0.6), 40);
  SimWorker a(worker_options(c.address, "a")), b(worker_options(c.address, "b"));
  a.start();
  b.start();
  ASSERT_TRUE(wait_until([&] { return c.status().committed_step() >= 2; }, 30));
  std::string b_id;  // registration order between a and b is a race
  const auto running = c.status();
  for (const auto& r : running.ranks()) {
    if (r.host() == "b") b_id = r.worker_id();
  }
  b.hang();
  ASSERT_TRUE(wait_until([&] { return c.status().state() == v1::RECOVERING; }, 10));
  SimWorker d(worker_options(c.address, "d"));
  d.start();
  ASSERT_TRUE(wait_until([&] { return c.status().attempt() == 2 && c.status().state() == v1::RUNNING; }, 10));
  // The hung worker wakes up and reports with what it knew.
  auto stub = v1::Coordinator::NewStub(make_channel({c.address, kToken, ""}));
  const auto st = c.status();
  v1::ReportStepRequest q;
  q.set_worker_id(st.ranks(0).worker_id());  // a live worker (a), with the old attempt
  q.set_attempt(1);
  q.set_step(st.committed_step() + 1);
  q.set_loss(1);
  v1::ReportStepResponse r;
  grpc::ClientContext ctx;
  prepare(ctx, kToken, std::chrono::seconds(5));
  auto s = stub->ReportStep(&ctx, q, &r);
  EXPECT_EQ(s.error_code(), StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("stale attempt 1"), std::string::npos) << s.error_message();
  // The dead one is told it is dead.
  v1::HeartbeatRequest hb;
  hb.set_worker_id(b_id);
  v1::HeartbeatResponse hr;
  grpc::ClientContext ctx2;
  prepare(ctx2, kToken, std::chrono::seconds(5));
  s = stub->Heartbeat(&ctx2, hb, &hr);
  EXPECT_EQ(s.error_code(), StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("declared dead"), std::string::npos) << s.error_message();
}

TEST(CoordinatorRpc, WrongOrMissingTokenIsUnauthenticatedAndCounted) {
  ServerOptions options;
  options.metrics_listen = "127.0.0.1:0";
  Served c(settings(1), 10, {}, options);
  auto stub = v1::Coordinator::NewStub(make_channel({c.address, kToken, ""}));
  for (const char* token : {"wrong", ""}) {
    grpc::ClientContext ctx;
    if (*token) prepare(ctx, token, std::chrono::seconds(5));
    v1::JobStatus st;
    auto s = stub->GetStatus(&ctx, v1::GetStatusRequest(), &st);
    EXPECT_EQ(s.error_code(), StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(s.error_message().find(kToken), std::string::npos);
  }
  grpc::ClientContext ok;
  prepare(ok, kToken, std::chrono::seconds(5));
  v1::JobStatus st;
  ASSERT_TRUE(stub->GetStatus(&ok, v1::GetStatusRequest(), &st).ok());
  EXPECT_EQ(st.job_id(), "itest");
  const std::string metrics = scrape_metrics(c.server->metrics_port());
  EXPECT_NE(metrics.find("herd_auth_failures_total 2"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find(R"(herd_rpcs_total{code="UNAUTHENTICATED",method="GetStatus"} 2)"), std::string::npos);
}

// Each malformed request, sent over gRPC, is refused with its own status code and a
// message that names what is wrong; none disturbs the job.
TEST(CoordinatorRpc, MalformedRequestsAreRefusedPrecisely) {
  Served c(settings(1), 10);
  auto stub = v1::Coordinator::NewStub(make_channel({c.address, kToken, ""}));
  auto rpc = [&](auto method, const auto& request, auto response) {
    grpc::ClientContext ctx;
    prepare(ctx, kToken, std::chrono::seconds(5));
    return ((*stub).*method)(&ctx, request, &response);
  };
  auto reg = [&](std::string job, std::string host, v1::RegisterResponse* out = nullptr) {
    v1::RegisterRequest q;
    q.set_job_id(job);
    q.set_host(host);
    grpc::ClientContext ctx;
    prepare(ctx, kToken, std::chrono::seconds(5));
    v1::RegisterResponse r;
    auto s = stub->Register(&ctx, q, &r);
    if (out) *out = r;
    return s;
  };
  v1::RegisterResponse me;
  ASSERT_TRUE(reg("itest", "h", &me).ok());
  const std::string a = me.worker_id();
  auto report = [&](std::string id, uint64_t attempt, uint64_t step, double loss = 1.0) {
    v1::ReportStepRequest q;
    q.set_worker_id(id);
    q.set_attempt(attempt);
    q.set_step(step);
    q.set_loss(loss);
    return rpc(&v1::Coordinator::Stub::ReportStep, q, v1::ReportStepResponse());
  };
  auto ckpt = [&](uint64_t step, std::string path, std::string digest) {
    v1::CommitCheckpointRequest q;
    q.set_worker_id(a);
    q.set_attempt(1);
    q.set_step(step);
    q.set_path(path);
    q.set_digest(digest);
    return rpc(&v1::Coordinator::Stub::CommitCheckpoint, q, v1::CommitCheckpointResponse());
  };
  auto kvset = [&](std::string key, size_t value_bytes) {
    v1::KvSetRequest q;
    q.set_worker_id(a);
    q.set_attempt(1);
    q.set_key(key);
    q.set_value(std::string(value_bytes, 'x'));
    return rpc(&v1::Coordinator::Stub::KvSet, q, v1::KvSetResponse());
  };
  struct Case {
    const char* what;
    std::function<grpc::Status()> call;
    StatusCode code;
    const char* says;
  };
  const std::string digest(64, 'a');
  const Case cases[] = {
      {"wrong job", [&] { return reg("other", "h"); }, StatusCode::INVALID_ARGUMENT, "not this coordinator's job"},
      {"empty host", [&] { return reg("itest", ""); }, StatusCode::INVALID_ARGUMENT, "host"},
      {"unknown worker", [&] { return report("w1-99", 1, 1); }, StatusCode::NOT_FOUND, "unknown worker"},
      {"empty worker id", [&] { return report("", 1, 1); }, StatusCode::INVALID_ARGUMENT, "worker_id is empty"},
      {"attempt 0", [&] { return report(a, 0, 1); }, StatusCode::INVALID_ARGUMENT, "attempt is 0"},
      {"future attempt", [&] { return report(a, 7, 1); }, StatusCode::INVALID_ARGUMENT, "does not exist"},
      {"step out of order", [&] { return report(a, 1, 2); }, StatusCode::FAILED_PRECONDITION, "out of order"},
      {"step 0", [&] { return report(a, 1, 0); }, StatusCode::OUT_OF_RANGE, "outside"},
      {"step past the end", [&] { return report(a, 1, 1000); }, StatusCode::OUT_OF_RANGE, "outside"},
      {"NaN loss", [&] { return report(a, 1, 1, std::nan("")); }, StatusCode::INVALID_ARGUMENT,
       "loss must be finite"},
      {"bad digest", [&] { return ckpt(1, "p", "xyz"); }, StatusCode::INVALID_ARGUMENT, "sha256"},
      {"empty path", [&] { return ckpt(1, "", digest); }, StatusCode::INVALID_ARGUMENT, "path"},
      {"checkpoint of an unreported step", [&] { return ckpt(1, "p", digest); }, StatusCode::FAILED_PRECONDITION,
       "not reported"},
      {"key with a space", [&] { return kvset("a b", 1); }, StatusCode::INVALID_ARGUMENT, "printable"},
      {"oversized value", [&] { return kvset("k", 70000); }, StatusCode::INVALID_ARGUMENT, "limit"},
      {"oversized message", [&] { return kvset("k", 2 << 20); }, StatusCode::RESOURCE_EXHAUSTED, ""},
      {"gang wait too long",
       [&] {
         v1::WaitForGangRequest q;
         q.set_worker_id(a);
         q.set_timeout_seconds(100000);
         return rpc(&v1::Coordinator::Stub::WaitForGang, q, v1::WaitForGangResponse());
       },
       StatusCode::INVALID_ARGUMENT, "timeout_seconds"},
      {"stream before the resume point",
       [&] {
         v1::StreamBatchesRequest q;
         q.set_worker_id(a);
         q.set_attempt(1);
         q.set_from_step(0);
         grpc::ClientContext ctx;
         prepare(ctx, kToken, std::chrono::seconds(5));
         auto reader = stub->StreamBatches(&ctx, q);
         v1::MicroBatch m;
         while (reader->Read(&m)) {
         }
         return reader->Finish();
       },
       StatusCode::OUT_OF_RANGE, "from_step"},
      {"infinite tokens/s",
       [&] {
         v1::HeartbeatRequest q;
         q.set_worker_id(a);
         q.mutable_stats()->set_tokens_per_second(INFINITY);
         return rpc(&v1::Coordinator::Stub::Heartbeat, q, v1::HeartbeatResponse());
       },
       StatusCode::INVALID_ARGUMENT, "tokens_per_second"},
      {"cancel reason too long",
       [&] {
         v1::CancelRequest q;
         q.set_reason(std::string(5000, 'r'));
         return rpc(&v1::Coordinator::Stub::Cancel, q, v1::OperatorResponse());
       },
       StatusCode::INVALID_ARGUMENT, "reason"},
  };
  for (const auto& k : cases) {
    const auto s = k.call();
    EXPECT_EQ(s.error_code(), k.code) << k.what << ": " << s.error_message();
    EXPECT_NE(s.error_message().find(k.says), std::string::npos) << k.what << ": " << s.error_message();
  }
  EXPECT_EQ(c.status().state(), v1::RUNNING);
  EXPECT_TRUE(report(a, 1, 1).ok());
}

// One call of any method through the generic stub, the request given as bytes: the
// status the server answered (a unary exchange suits the streaming methods too, as
// none sends a message when it refuses).
grpc::Status generic_call(grpc::GenericStub& stub, const std::string& method, const std::string& token,
                          const std::string& request_bytes) {
  grpc::ClientContext ctx;
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1), response;
  std::promise<grpc::Status> answered;
  stub.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) { answered.set_value(std::move(s)); });
  return answered.get_future().get();
}

TEST(CoordinatorRpc, GarbageBytesAreRefusedNotFatal) {
  Served c(settings(1), 10);
  auto channel = make_channel({c.address, kToken, ""});
  grpc::GenericStub generic(channel);
  const grpc::Status result =
      generic_call(generic, "/herd.v1.Coordinator/Register", kToken, "\xff\xff\xff\xff not a protobuf");
  EXPECT_FALSE(result.ok());
  EXPECT_NE(result.error_code(), StatusCode::UNAVAILABLE);

  auto stub = v1::Coordinator::NewStub(channel);
  // Still serving.
  grpc::ClientContext ctx3;
  prepare(ctx3, kToken, std::chrono::seconds(5));
  v1::JobStatus st;
  EXPECT_TRUE(stub->GetStatus(&ctx3, v1::GetStatusRequest(), &st).ok());
}

// Every method of the service, walked from the proto descriptor so that a new RPC
// cannot be missed, refuses a call without the token and one with a wrong token;
// the server counts each refusal, and with the token none is refused for it.
TEST(CoordinatorSecurity, EveryMethodRefusesAMissingOrAWrongToken) {
  ServerOptions options;
  options.metrics_listen = "127.0.0.1:0";
  Served c(settings(1), 10, {}, options);
  const auto* service =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(v1::Coordinator::service_full_name());
  ASSERT_NE(service, nullptr);
  ASSERT_EQ(service->method_count(), 16);
  grpc::GenericStub generic(make_channel({c.address, kToken, ""}));
  for (int i = 0; i < service->method_count(); ++i) {
    const std::string method = fmt::format("/{}/{}", service->full_name(), service->method(i)->name());
    for (const std::string token : {"", "wrong-token"}) {
      const auto s = generic_call(generic, method, token, "");
      EXPECT_EQ(s.error_code(), StatusCode::UNAUTHENTICATED) << method << " with token '" << token << "'";
      EXPECT_EQ(s.error_message().find(kToken), std::string::npos);
    }
    EXPECT_NE(generic_call(generic, method, kToken, "").error_code(), StatusCode::UNAUTHENTICATED) << method;
  }
  const std::string metrics = scrape_metrics(c.server->metrics_port());
  EXPECT_NE(metrics.find(fmt::format("herd_auth_failures_total {}", 2 * service->method_count())), std::string::npos)
      << metrics;
}

// The coordinator refuses a request over protocol::kMaxRequestBytes, and the
// shipping client's channel will not send one.
TEST(CoordinatorSecurity, MessageSizesAreLimitedOnBothEnds) {
  Served c(settings(1), 10);
  v1::KvSetRequest big;
  big.set_key("k");
  big.set_value(std::string(protocol::kMaxRequestBytes + 1, 'x'));

  grpc::ChannelArguments unlimited;
  unlimited.SetMaxSendMessageSize(-1);
  grpc::GenericStub raw(grpc::CreateCustomChannel(c.address, grpc::InsecureChannelCredentials(), unlimited));
  const auto server = generic_call(raw, "/herd.v1.Coordinator/KvSet", kToken, big.SerializeAsString());
  EXPECT_EQ(server.error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(server.error_message().find("Received message larger than max"), std::string::npos)
      << server.error_message();

  auto stub = v1::Coordinator::NewStub(make_channel({c.address, kToken, ""}));
  grpc::ClientContext ctx;
  prepare(ctx, kToken, std::chrono::seconds(5));
  v1::KvSetResponse r;
  const auto client = stub->KvSet(&ctx, big, &r);
  EXPECT_EQ(client.error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(client.error_message().find("Sent message larger than max"), std::string::npos) << client.error_message();
}

int run(const std::string& command) { return std::system(command.c_str()); }

TEST(CoordinatorRpc, TlsWhenConfigured) {
  // scripts/install-deps installs openssl; a machine without it (the GPU box) skips.
  if (run("openssl version >/dev/null 2>&1") != 0) GTEST_SKIP() << "no openssl command to make a certificate";
  const auto dir = temp_dir("tls");
  ASSERT_EQ(run(fmt::format("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
                            "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout {0}/key.pem -out {0}/cert.pem "
                            ">/dev/null 2>&1",
                            dir.string())),
            0);
  ServerOptions options;
  options.tls_cert_pem = read_secret_file((dir / "cert.pem").string(), "cert");
  options.tls_key_pem = read_secret_file((dir / "key.pem").string(), "key");
  Served c(settings(1), 10, {}, options);
  const std::string address = fmt::format("localhost:{}", c.server->port());
  auto secure = v1::Coordinator::NewStub(make_channel({address, kToken, options.tls_cert_pem}));
  grpc::ClientContext ctx;
  prepare(ctx, kToken, std::chrono::seconds(10));
  v1::JobStatus st;
  auto s = secure->GetStatus(&ctx, v1::GetStatusRequest(), &st);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(st.job_id(), "itest");
  auto plain = v1::Coordinator::NewStub(make_channel({address, kToken, ""}));
  grpc::ClientContext ctx2;
  prepare(ctx2, kToken, std::chrono::seconds(3));
  EXPECT_EQ(plain->GetStatus(&ctx2, v1::GetStatusRequest(), &st).error_code(), StatusCode::UNAVAILABLE);
  // A whole run over TLS.
  auto o = worker_options(address, "tls-worker");
  o.client.tls_ca_pem = options.tls_cert_pem;
  SimWorker w(o);
  w.start();
  EXPECT_TRUE(wait_until([&] { return c.status().state() == v1::DONE; }, 30)) << c.status().DebugString();
  fs::remove_all(dir);
}

// herd-coordinator as its own process, killed with SIGKILL mid-epoch and started again.
pid_t spawn_coordinator(const fs::path& config, const fs::path& port_file, const std::string& listen) {
  std::vector<std::string> args = {std::string(HERD_BIN_DIR) + "/herd-coordinator",
                                   "--config",         config.string(),
                                   "--listen",         listen,
                                   "--port-file",      port_file.string(),
                                   "--synthetic-data", "48,8,40"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  EXPECT_EQ(posix_spawn(&pid, args[0].c_str(), nullptr, nullptr, argv.data(), environ), 0);
  return pid;
}

int read_port(const fs::path& port_file) {
  if (!wait_until([&] { return fs::exists(port_file); }, 30)) return 0;
  std::ifstream in(port_file);
  int port = 0;
  in >> port;
  return port;
}

TEST(CoordinatorProcess, SigkillAndRestartResumesTheJob) {
  const auto dir = temp_dir("sigkill");
  const auto config = dir / "job.yaml";
  std::ofstream(config) << fmt::format(R"(model_name: itest
base_model: unused
data: {{type: vicuna, dataset: unused.json}}
lora: {{r: 8, lora_alpha: 16, target_modules: [q_proj], lora_dropout: 0, bias: none, task_type: CAUSAL_LM}}
trainer: {{batch_size: 1, gradient_accumulation_steps: 2, warmup_steps: 0, num_train_epochs: 1,
          learning_rate: 0.001, logging_steps: 1}}
trainer_output_dir: {0}/out
model_output_dir: {0}/models
distributed: {{world_size: 2, heartbeat_timeout_s: 3}}
security: {{token: {1}}}
metrics: {{enabled: false}}
)",
                                                   dir.string(), kToken);
  auto port_file = dir / "port";
  pid_t pid = spawn_coordinator(config, port_file, "127.0.0.1:0");
  int port = read_port(port_file);
  ASSERT_GT(port, 0);
  const std::string address = fmt::format("127.0.0.1:{}", port);
  auto status = [&](const std::string& addr) {
    auto stub = v1::Coordinator::NewStub(make_channel({addr, kToken, ""}));
    grpc::ClientContext ctx;
    prepare(ctx, kToken, std::chrono::seconds(2));
    v1::JobStatus st;
    (void)stub->GetStatus(&ctx, v1::GetStatusRequest(), &st);
    return st;
  };
  std::vector<std::unique_ptr<SimWorker>> workers;
  for (const char* host : {"a", "b"}) {
    auto o = worker_options(address, host, 2);
    o.step_seconds = 0.1;
    o.output_dir = (dir / "out").string();
    workers.push_back(std::make_unique<SimWorker>(o));
    workers.back()->start();
  }
  ASSERT_TRUE(wait_until([&] { return status(address).checkpoint_step() >= 4; }, 60));
  const uint64_t before = status(address).committed_step();
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  int wstatus = 0;
  ::waitpid(pid, &wstatus, 0);
  EXPECT_TRUE(WIFSIGNALED(wstatus));

  // Started again on the same port: the workers reconnect with backoff.
  fs::remove(port_file);
  pid = spawn_coordinator(config, port_file, address);
  ASSERT_GT(read_port(port_file), 0);
  const auto after = status(address);
  EXPECT_GE(after.checkpoint_step(), 4u);
  EXPECT_LE(after.checkpoint_step(), before);
  // Once the job is DONE and both workers know it, the coordinator exits 0 by itself.
  ASSERT_TRUE(wait_until([&] { return ::waitpid(pid, &wstatus, WNOHANG) == pid; }, 90));
  EXPECT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) << wstatus;

  // The journal's sample log: every sample once.
  Journal journal(dir / "out" / "coordinator" / "journal.log");
  std::multiset<uint64_t> seen;
  for (const auto& [step, ids] : trained_samples(journal.records())) seen.insert(ids.begin(), ids.end());
  std::multiset<uint64_t> want;
  for (uint64_t i = 0; i < 48; ++i) want.insert(i);
  EXPECT_EQ(seen, want);
  EXPECT_EQ(std::count_if(journal.records().begin(), journal.records().end(),
                          [](const JournalRecord& r) { return r.type == kGang; }),
            2);  // one gang before the kill, one after
  workers.clear();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace herd::coordinator
