#include "coordinator/job.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "common/checkpoint_files.h"
#include "common/config.h"
#include "common/job_data.h"
#include "common/packing.h"
#include "common/protocol_limits.h"
#include "common/tokenizer.h"

namespace herd::coordinator {

using grpc::Status;
using grpc::StatusCode;
using herd::v1::JobState;
using nlohmann::json;

namespace {

using namespace herd::protocol;  // the request limits (common/protocol_limits.h)
// After a member reports a failed collective, how long the coordinator waits before
// forming the next gang (so that a member that died is noticed and left out).
constexpr double kFailureGraceS = 1.0;
constexpr auto kPoll = std::chrono::milliseconds(200);  // how often a blocked call checks its client

Status error(StatusCode code, std::string message) { return {code, std::move(message)}; }

std::string state_name(JobState s) { return herd::v1::JobState_Name(s); }

bool is_sha256_hex(const std::string& s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

bool finite_nonnegative(double v) { return std::isfinite(v) && v >= 0; }

}  // namespace

JobSettings JobSettings::from_config(const Config& c) {
  JobSettings s;
  s.job_id = c.model_name;
  s.world_size = static_cast<uint32_t>(c.distributed.world_size);
  s.min_workers = static_cast<uint32_t>(c.distributed.min_workers > 0 ? c.distributed.min_workers : c.distributed.world_size);
  s.batch_size = static_cast<uint32_t>(c.trainer.batch_size);
  s.gradient_accumulation_steps = static_cast<uint32_t>(c.trainer.gradient_accumulation_steps);
  s.seed = static_cast<uint64_t>(c.trainer.seed);
  s.num_train_epochs = c.trainer.num_train_epochs;
  s.max_steps = static_cast<uint64_t>(c.trainer.max_steps);
  s.heartbeat_timeout_s = c.distributed.heartbeat_timeout_s;
  s.replacement_timeout_s = c.distributed.replacement_timeout_s;
  s.regrow = c.distributed.regrow;
  s.regrow_after_s = c.distributed.regrow_after_s;
  s.shared = shared_settings(c);
  s.checkpoint_root = c.trainer_output_dir;
  return s;
}

std::unique_ptr<Job> load_job(const Config& config, const std::filesystem::path& journal_file) {
  JobData data = job_data(config);
  load_format(data.settings, data.tokenizer);
  auto loaded = load_tokenized_dataset(data.data_files, data.tokenizer, data.settings, data.cache_dir);
  auto samples = std::make_shared<CachedSamples>(std::move(loaded.cache));
  auto split = split_eval(samples->size(), config.data.eval_fraction, static_cast<uint64_t>(config.trainer.seed));
  JobSettings settings = JobSettings::from_config(config);
  if (config.data.packing) settings.pack_window = data.settings.context_window;
  auto job = std::make_unique<Job>(std::move(settings), std::move(samples), std::move(split.train), journal_file);
  job->eval_ = std::move(split.eval);
  if (!loaded.rebuilt_because.empty()) {
    job->resume_warnings_.push_back(
        fmt::format("{} was not used ({}); the data was tokenized again", loaded.file.string(), loaded.rebuilt_because));
  }
  return job;
}

Job::Clock Job::steady_clock() {
  return [] { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); };
}

std::map<uint64_t, std::vector<uint64_t>> trained_samples(const std::vector<JournalRecord>& records) {
  std::map<uint64_t, std::vector<uint64_t>> steps;
  for (size_t i = 0; i < records.size(); ++i) {
    const auto& r = records[i];
    try {
      if (r.type == kGang) {
        const uint64_t resume = json::parse(r.payload).at("resume_step").get<uint64_t>();
        steps.erase(steps.upper_bound(resume), steps.end());
      } else if (r.type == kStep) {
        const json j = json::parse(r.payload);
        steps[j.at("step").get<uint64_t>()] = j.at("samples").get<std::vector<uint64_t>>();
      }
    } catch (const json::exception& e) {
      throw JournalError(fmt::format("journal record {} is not what herd writes ({})", i, e.what()));
    }
  }
  return steps;
}

Job::Job(JobSettings settings, std::shared_ptr<const SampleSource> samples, std::vector<size_t> train,
         const std::filesystem::path& journal_file, Clock clock)
    : settings_(std::move(settings)), clock_(std::move(clock)) {
  if (settings_.world_size == 0 || settings_.batch_size == 0 || settings_.gradient_accumulation_steps == 0 ||
      settings_.min_workers == 0 || settings_.min_workers > settings_.world_size) {
    throw std::invalid_argument("job: world size, batch size and accumulation must be >= 1, min_workers in 1..world_size");
  }
  if (train.empty()) throw std::invalid_argument("job: the train split has no samples");
  planner_ = std::make_unique<StepPlanner>(
      std::move(samples), std::move(train), settings_.seed,
      PlanShape{settings_.batch_size, settings_.gradient_accumulation_steps, settings_.world_size},
      static_cast<size_t>(settings_.pack_window));
  const double epochs = settings_.num_train_epochs * static_cast<double>(planner_->steps_per_epoch());
  total_steps_ = std::max<uint64_t>(settings_.max_steps > 0 ? settings_.max_steps : static_cast<uint64_t>(std::ceil(epochs)), 1);

  json fingerprint = {{"job_id", settings_.job_id},
                      {"global_batch", settings_.global_batch()},
                      {"train_samples", planner_->train_samples()},
                      {"train_tokens", planner_->train_tokens()},
                      {"seed", settings_.seed},
                      {"total_steps", total_steps_},
                      {"batch_size", settings_.batch_size}};
  if (settings_.pack_window > 0) {
    fingerprint["pack_window"] = settings_.pack_window;
    fingerprint["rows"] = planner_->rows_per_epoch();
  }
  if (!journal_file.empty()) {
    std::filesystem::create_directories(journal_file.parent_path().empty() ? "." : journal_file.parent_path());
    journal_ = std::make_unique<Journal>(journal_file);
    try {
      for (const auto& r : journal_->records()) {
        if (r.type != kStart) continue;
        const json seen = json::parse(r.payload).at("plan");
        if (seen != fingerprint) {
          throw JournalError(fmt::format(
              "{}: this journal belongs to another job or plan ({}); this config gives {}. Use a fresh "
              "trainer_output_dir, or restore the config the job started with",
              journal_file.string(), seen.dump(), fingerprint.dump()));
        }
      }
      replay(journal_->records());
      journal_->forget_records();
    } catch (const json::exception& e) {  // checksummed, yet not what herd writes
      throw JournalError(fmt::format("{}: a record is not what herd writes ({}); the job cannot resume from it",
                                     journal_file.string(), e.what()));
    }
    if (journal_->dropped_tail()) {
      resume_warnings_.push_back(fmt::format("{}: its last record was torn (the coordinator died writing it) and is "
                                             "dropped: it was never answered",
                                             journal_file.string()));
    }
  }
  ++incarnation_;
  roster_.set_incarnation(incarnation_);
  recovering_since_ = clock_();  // a resumed job waits replacement_timeout_s for all its workers
  if (journal_) journal_->append(kStart, json{{"incarnation", incarnation_}, {"plan", fingerprint}}.dump());
}

Job::~Job() { shutdown(); }

void Job::replay(const std::vector<JournalRecord>& records) {
  std::vector<CommitLedger::Checkpoint> checkpoints;  // oldest first; those a recovery rolled back are dropped
  bool done = false;
  for (const auto& r : records) {
    const json j = json::parse(r.payload);
    switch (r.type) {
      case kStart: incarnation_ = std::max(incarnation_, j.at("incarnation").get<uint64_t>()); break;
      case kGang: {
        attempt_ = std::max(attempt_, j.at("attempt").get<uint64_t>());
        const uint64_t resume = j.at("resume_step").get<uint64_t>();
        std::erase_if(checkpoints, [&](const auto& c) { return c.step > resume; });
        break;
      }
      case kCheckpoint:
        checkpoints.push_back({j.at("step").get<uint64_t>(), j.at("paths").at(0).get<std::string>(),
                               j.at("digests").at(0).get<std::string>()});
        break;
      case kCancel: state_ = herd::v1::FAILED, message_ = "cancelled: " + j.at("reason").get<std::string>(); break;
      case kDone: done = true; break;
      default: break;
    }
  }
  resume_warnings_ = ledger_.resume_from(checkpoints);
  if (done && ledger_.checkpoint_step() == total_steps_) state_ = herd::v1::DONE;
}

JobState Job::state() const {
  std::lock_guard lock(mutex_);
  return state_;
}

std::string Job::packing_summary() const {
  if (settings_.pack_window == 0) return "";
  return fmt::format("packing: {} samples in {} rows of {} tokens, {:.1f}% full", planner_->train_samples(),
                     planner_->rows_per_epoch(), settings_.pack_window, 100.0 * planner_->packing_efficiency());
}

std::pair<double, double> Job::epoch_imbalance(uint64_t epoch) {
  std::lock_guard lock(mutex_);
  return planner_->imbalance(epoch);
}

bool Job::training_locked() const { return state_ == herd::v1::RUNNING || state_ == herd::v1::DRAINING; }
bool Job::terminal_locked() const {
  return state_ == herd::v1::DONE || state_ == herd::v1::FAILED || state_ == herd::v1::STOPPED;
}

void Job::set_state_locked(JobState state, std::string message) {
  state_ = state;
  message_ = std::move(message);
  changed_locked();
}

void Job::changed_locked() {
  ++version_;
  changed_.notify_all();
  kv_changed_.notify_all();
}

uint64_t Job::WaitForChange(uint64_t seen, std::chrono::milliseconds timeout) const {
  std::unique_lock lock(mutex_);
  changed_.wait_for(lock, timeout, [&] { return version_ != seen; });
  return version_;
}

void Job::journal_locked(RecordType type, const std::string& payload) {
  if (!journal_) return;
  try {
    journal_->append(type, payload);
  } catch (const JournalError& e) {
    // Nothing the journal lacks may be answered: the job stops here (in memory only;
    // the journal cannot say so) and a restart resumes from what it holds.
    set_state_locked(herd::v1::FAILED,
                     fmt::format("cannot write the journal, so the job stopped at its last durable record (committed "
                                 "step {}, checkpoint {}): {}. Free the space and start the job again: it resumes "
                                 "from checkpoint {}",
                                 ledger_.committed_step(), ledger_.checkpoint_step(), e.what(),
                                 ledger_.checkpoint_step()));
    throw;
  }
}

Status Job::member_locked(const std::string& worker_id, uint64_t attempt, Worker** out) {
  if (auto s = roster_.find(worker_id, out); !s.ok()) return s;
  Worker& w = **out;
  if (attempt == 0) return error(StatusCode::INVALID_ARGUMENT, "attempt is 0: use the attempt WaitForGang answered");
  if (attempt < attempt_) {
    return error(StatusCode::FAILED_PRECONDITION,
                 fmt::format("stale attempt {}: the job is at attempt {}; call WaitForGang to rejoin", attempt, attempt_));
  }
  if (attempt > attempt_) {
    return error(StatusCode::INVALID_ARGUMENT, fmt::format("attempt {} does not exist (current: {})", attempt, attempt_));
  }
  if (w.attempt != attempt_) {
    return error(StatusCode::FAILED_PRECONDITION,
                 fmt::format("worker {} holds no rank in attempt {}: call WaitForGang", worker_id, attempt_));
  }
  if (state_ == herd::v1::RECOVERING) {
    return error(StatusCode::ABORTED, fmt::format("the job is RECOVERING ({}): stop at the step boundary and call "
                                                  "WaitForGang",
                                                  message_));
  }
  if (terminal_locked()) return error(StatusCode::FAILED_PRECONDITION, "the job is " + state_name(state_));
  return Status::OK;
}

// ---- Membership --------------------------------------------------------------

// A worker started with another config than the job's would train other numbers (or
// meet its peers at other steps): refused, naming the keys that differ.
Status Job::same_settings(const google::protobuf::Map<std::string, std::string>& theirs) const {
  if (theirs.empty()) return Status::OK;
  if (theirs.size() > kMaxSettings) {
    return error(StatusCode::INVALID_ARGUMENT, fmt::format("at most {} settings", kMaxSettings));
  }
  std::vector<std::string> differ;
  auto value = [](const auto& map, const std::string& key) -> std::string {
    auto it = map.find(key);
    return it == map.end() ? "(unset)" : it->second.substr(0, 64);
  };
  std::set<std::string> keys;
  for (const auto& [k, v] : theirs) {
    if (k.size() > kMaxSetting || v.size() > kMaxSetting) {
      return error(StatusCode::INVALID_ARGUMENT, fmt::format("a setting's key or value is longer than {}", kMaxSetting));
    }
    keys.insert(k);
  }
  for (const auto& [k, v] : settings_.shared) keys.insert(k);
  for (const auto& k : keys) {
    const std::string mine = value(settings_.shared, k), yours = value(theirs, k);
    if (mine != yours) differ.push_back(fmt::format("{} is {} there, {} in the job", k.substr(0, 64), yours, mine));
  }
  if (differ.empty()) return Status::OK;
  return error(StatusCode::FAILED_PRECONDITION,
               fmt::format("this worker's config is not the job's: {}{}. Start it with the job's config, or with no "
                           "CONFIG to take the coordinator's",
                           fmt::join(differ.begin(), differ.begin() + std::min<size_t>(differ.size(), 8), "; "),
                           differ.size() > 8 ? fmt::format("; and {} more", differ.size() - 8) : ""));
}

Status Job::Register(const herd::v1::RegisterRequest& request, herd::v1::RegisterResponse* response) {
  if (request.job_id() != settings_.job_id) {
    return error(StatusCode::INVALID_ARGUMENT, fmt::format("job_id '{}' is not this coordinator's job '{}'",
                                                           request.job_id().substr(0, 128), settings_.job_id));
  }
  if (request.host().empty() || request.host().size() > kMaxHost) {
    return error(StatusCode::INVALID_ARGUMENT, fmt::format("host must have 1..{} characters", kMaxHost));
  }
  for (const auto* list : {&request.devices(), &request.capabilities()}) {
    if (static_cast<size_t>(list->size()) > kMaxListEntries) {
      return error(StatusCode::INVALID_ARGUMENT, fmt::format("at most {} devices and capabilities", kMaxListEntries));
    }
    for (const auto& e : *list) {
      if (e.size() > kMaxEntry) {
        return error(StatusCode::INVALID_ARGUMENT, fmt::format("a device or capability is longer than {}", kMaxEntry));
      }
    }
  }
  if (auto s = same_settings(request.settings()); !s.ok()) return s;
  std::lock_guard lock(mutex_);
  if (terminal_locked()) {
    return error(StatusCode::FAILED_PRECONDITION,
                 fmt::format("the job is {}{}", state_name(state_), message_.empty() ? "" : ": " + message_));
  }
  const size_t alive = roster_.alive();
  const size_t limit = settings_.world_size + std::max<size_t>(8, settings_.world_size);
  if (alive >= limit) {
    return error(StatusCode::RESOURCE_EXHAUSTED,
                 fmt::format("{} workers are registered already (world size {}, at most {} with spares)", alive,
                             settings_.world_size, limit));
  }
  const double now = clock_();
  response->set_worker_id(roster_.add(request.host(), now).id);
  response->set_lease_seconds(static_cast<uint32_t>(std::max(1.0, std::floor(settings_.heartbeat_timeout_s))));
  try_form_gang_locked(now);
  return Status::OK;
}

Status Job::Heartbeat(const herd::v1::HeartbeatRequest& request, herd::v1::HeartbeatResponse* response) {
  if (!finite_nonnegative(request.stats().tokens_per_second())) {
    return error(StatusCode::INVALID_ARGUMENT, "stats.tokens_per_second must be finite and >= 0");
  }
  std::lock_guard lock(mutex_);
  Worker* w = nullptr;
  if (auto s = roster_.find(request.worker_id(), &w); !s.ok()) return s;
  w->last_heartbeat = clock_();
  w->told = terminal_locked();
  w->tokens_per_second = request.stats().tokens_per_second();
  response->set_state(state_);
  response->set_attempt(attempt_);
  response->set_committed_step(ledger_.committed_step());
  return Status::OK;
}

void Job::try_form_gang_locked(double now) {
  if (state_ != herd::v1::REGISTERING && state_ != herd::v1::RECOVERING) return;
  if (failure_reported_ && now - recovering_since_ < kFailureGraceS) return;
  const std::vector<Worker*> alive = roster_.alive_by_arrival();
  if (alive.size() >= settings_.world_size) {
    form_gang_locked(settings_.world_size, alive, state_ == herd::v1::REGISTERING ? "start" : "failure");
    return;
  }
  // Fewer workers, once the wait for a replacement is over, when the global batch
  // can be kept by raising accumulation: after a loss, or when a restarted coordinator
  // resumes a job that had a gang (its workers may be fewer now; a regrow follows).
  const bool resumed = state_ == herd::v1::REGISTERING && attempt_ > 0;
  if ((state_ != herd::v1::RECOVERING && !resumed) || now - recovering_since_ < settings_.replacement_timeout_s) {
    return;
  }
  if (const uint32_t n = largest_gang_locked(alive.size()); n > 0) form_gang_locked(n, alive, "shrink");
}

uint32_t Job::largest_gang_locked(size_t workers) const {
  for (size_t n = std::min<size_t>(workers, settings_.world_size); n >= settings_.min_workers && n > 0; --n) {
    if (settings_.global_batch() % (uint64_t{settings_.batch_size} * n) == 0) return static_cast<uint32_t>(n);
  }
  return 0;
}

// A gang below the world size, with spares that have been alive for regrow_after_s:
// its ranks are told (MicroBatch.attempt_ends) to checkpoint a step none of them was
// streamed yet and to wait for the next gang; CommitCheckpoint forms it.
void Job::try_regrow_locked(double now) {
  if (!settings_.regrow || state_ != herd::v1::RUNNING || regrow_step_ != 0) return;
  const size_t gang = roster_.gang().size();
  if (gang >= settings_.world_size) return;
  size_t ready = 0;
  for (const Worker* w : roster_.alive_by_arrival()) {
    ready += w->attempt == attempt_ || now - w->registered_at >= settings_.regrow_after_s;
  }
  const uint32_t n = largest_gang_locked(ready);
  const uint64_t step = ledger_.committed_step() + settings_.lookahead_steps + 1;  // beyond every stream
  if (n <= gang || step >= total_steps_) return;  // no larger gang, or the job's end comes first
  regrow_step_ = step;
  message_ = fmt::format("regrowing from {} to {} workers at step {}'s checkpoint", gang, n, step);
  changed_locked();
}

void Job::form_gang_locked(uint32_t size, const std::vector<Worker*>& alive, const char* reason) {
  ++attempt_;
  const PlanShape shape{settings_.batch_size, settings_.global_batch() / (uint64_t{settings_.batch_size} * size), size};
  planner_->set_shape(shape);
  roster_.seat(attempt_, size, alive, ledger_.checkpoint_step());
  ledger_.restart();  // everything after the last checkpoint is trained again
  store_.clear();
  journal_locked(kGang, json{{"attempt", attempt_},
                             {"world_size", size},
                             {"accumulation", shape.gradient_accumulation_steps},
                             {"resume_step", ledger_.checkpoint_step()},
                             {"workers", roster_.gang()},
                             {"reason", reason}}
                            .dump());
  failure_reported_ = false;
  attempt_reason_ = reason;
  regrow_step_ = 0;
  set_state_locked(herd::v1::RUNNING, "");
}

void Job::mark_dead_locked(Worker& w, const std::string& reason, double now) {
  if (!w.alive) return;
  w.alive = false;
  w.death = reason;
  if (w.attempt == attempt_ && attempt_ > 0 && training_locked()) {
    journal_locked(kWorkerLost,
                   json{{"worker", w.id}, {"rank", w.rank}, {"attempt", attempt_}, {"reason", reason}}.dump());
    const std::string why = fmt::format("worker {} (rank {}, host {}) {}", w.id, w.rank, w.host, reason);
    if (drain_requested_) {
      set_state_locked(herd::v1::STOPPED, fmt::format("drained at checkpoint {} after {}", ledger_.checkpoint_step(), why));
      return;
    }
    recovering_since_ = now;
    set_state_locked(herd::v1::RECOVERING, why);
  }
  changed_locked();
}

Status Job::WaitForGang(const herd::v1::WaitForGangRequest& request, herd::v1::WaitForGangResponse* response,
                        const std::function<bool()>& cancelled) {
  if (request.timeout_seconds() > kMaxGangWaitS) {
    return error(StatusCode::INVALID_ARGUMENT, fmt::format("timeout_seconds must be <= {}", kMaxGangWaitS));
  }
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(request.timeout_seconds() ? request.timeout_seconds() : 60);
  Lock lock(mutex_);
  for (;;) {
    if (shutdown_) return error(StatusCode::UNAVAILABLE, "the coordinator is shutting down");
    Worker* w = nullptr;
    if (auto s = roster_.find(request.worker_id(), &w); !s.ok()) return s;
    if (terminal_locked()) {
      w->told = true;
      return error(StatusCode::FAILED_PRECONDITION,
                   fmt::format("the job is {}{}", state_name(state_), message_.empty() ? "" : ": " + message_));
    }
    if (training_locked() && w->attempt == attempt_ && attempt_ > request.after_attempt()) {
      response->set_rank(w->rank);
      response->set_world_size(planner_->shape().world_size);
      response->set_attempt(attempt_);
      response->set_rendezvous_prefix(fmt::format("{}/{}/", settings_.job_id, attempt_));
      response->set_resume_step(ledger_.checkpoint_step());
      response->set_resume_checkpoint(ledger_.checkpoint_path());
      response->set_gradient_accumulation_steps(static_cast<uint32_t>(planner_->shape().gradient_accumulation_steps));
      response->set_total_steps(total_steps_);
      response->set_batch_size(settings_.batch_size);
      response->set_steps_per_epoch(planner_->steps_per_epoch());
      response->set_reason(attempt_reason_);
      return Status::OK;
    }
    if (cancelled()) return error(StatusCode::CANCELLED, "the client went away");
    if (std::chrono::steady_clock::now() >= deadline) {
      return error(StatusCode::DEADLINE_EXCEEDED,
                   fmt::format("no gang for this worker yet: {} of {} workers alive, job {}; call again",
                               roster_.alive(),
                               settings_.world_size, state_name(state_)));
    }
    changed_.wait_until(lock, std::min(deadline, std::chrono::steady_clock::now() + kPoll));
  }
}

// ---- Rendezvous store --------------------------------------------------------

Status Job::KvSet(const herd::v1::KvSetRequest& request) {
  if (auto e = RendezvousStore::check_key(request.key())) return error(StatusCode::INVALID_ARGUMENT, *e);
  if (auto e = RendezvousStore::check_value(request.value())) return error(StatusCode::INVALID_ARGUMENT, *e);
  std::lock_guard lock(mutex_);
  Worker* w = nullptr;
  if (auto s = member_locked(request.worker_id(), request.attempt(), &w); !s.ok()) return s;
  if (auto s = store_.set(request.key(), request.value()); !s.ok()) return s;
  kv_changed_.notify_all();
  return Status::OK;
}

Status Job::KvGet(const herd::v1::KvGetRequest& request, herd::v1::KvGetResponse* response) {
  if (auto e = RendezvousStore::check_key(request.key())) return error(StatusCode::INVALID_ARGUMENT, *e);
  std::lock_guard lock(mutex_);
  Worker* w = nullptr;
  if (auto s = member_locked(request.worker_id(), request.attempt(), &w); !s.ok()) return s;
  const auto value = store_.get(request.key());
  response->set_found(value.has_value());
  if (value) response->set_value(*value);
  return Status::OK;
}

Status Job::KvWait(const herd::v1::KvWaitRequest& request, const std::function<bool()>& cancelled) {
  if (request.keys().empty() || static_cast<size_t>(request.keys().size()) > kMaxWaitKeys) {
    return error(StatusCode::INVALID_ARGUMENT, fmt::format("keys: 1..{} of them", kMaxWaitKeys));
  }
  for (const auto& k : request.keys()) {
    if (auto e = RendezvousStore::check_key(k)) return error(StatusCode::INVALID_ARGUMENT, *e);
  }
  if (request.timeout_ms() > kMaxKvWaitMs) {
    return error(StatusCode::INVALID_ARGUMENT, fmt::format("timeout_ms must be <= {}", kMaxKvWaitMs));
  }
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(request.timeout_ms() ? request.timeout_ms() : 30000);
  Lock lock(mutex_);
  for (;;) {
    if (shutdown_) return error(StatusCode::UNAVAILABLE, "the coordinator is shutting down");
    Worker* w = nullptr;
    if (auto s = member_locked(request.worker_id(), request.attempt(), &w); !s.ok()) return s;
    const auto missing = store_.missing(request.keys());
    if (missing.empty()) return Status::OK;
    if (cancelled()) return error(StatusCode::CANCELLED, "the client went away");
    if (std::chrono::steady_clock::now() >= deadline) {
      return error(StatusCode::DEADLINE_EXCEEDED, fmt::format("keys not set in time: {}", fmt::join(missing, ", ")));
    }
    kv_changed_.wait_until(lock, std::min(deadline, std::chrono::steady_clock::now() + kPoll));
  }
}

Status Job::KvAdd(const herd::v1::KvAddRequest& request, herd::v1::KvAddResponse* response) {
  if (auto e = RendezvousStore::check_key(request.key())) return error(StatusCode::INVALID_ARGUMENT, *e);
  std::lock_guard lock(mutex_);
  Worker* w = nullptr;
  if (auto s = member_locked(request.worker_id(), request.attempt(), &w); !s.ok()) return s;
  int64_t value = 0;
  if (auto s = store_.add(request.key(), request.delta(), &value); !s.ok()) return s;
  response->set_value(value);
  kv_changed_.notify_all();
  return Status::OK;
}

// ---- Data and progress -------------------------------------------------------

herd::v1::MicroBatch Job::micro_batch(const std::vector<size_t>& rows) const { return planner_->micro_batch(rows); }

Status Job::ReportFailure(const herd::v1::ReportFailureRequest& request) {
  if (request.reason().size() > kMaxReason) {
    return error(StatusCode::INVALID_ARGUMENT, fmt::format("reason is longer than {} bytes", kMaxReason));
  }
  std::lock_guard lock(mutex_);
  Worker* w = nullptr;
  if (request.leaving()) {  // declared dead at once, rather than after its heartbeat timeout
    if (auto s = roster_.find(request.worker_id(), &w); !s.ok()) return s;
    mark_dead_locked(*w, "left: " + request.reason(), clock_());
    return Status::OK;
  }
  if (auto s = member_locked(request.worker_id(), request.attempt(), &w); !s.ok()) return s;
  if (!training_locked()) return Status::OK;  // a recovery is under way
  const std::string why = fmt::format("rank {} (worker {}, host {}) reported: {}", w->rank, w->id, w->host,
                                      request.reason());
  if (drain_requested_) {
    set_state_locked(herd::v1::STOPPED, fmt::format("drained at checkpoint {} after {}", ledger_.checkpoint_step(), why));
  } else {
    // The next gang forms at a tick after a grace period: a member whose process
    // died (the likely cause) is noticed by then and left out.
    recovering_since_ = clock_();
    failure_reported_ = true;
    set_state_locked(herd::v1::RECOVERING, why);
  }
  changed_locked();
  return Status::OK;
}

Status Job::EvalBatches(const herd::v1::EvalBatchesRequest& request, std::vector<herd::v1::MicroBatch>* out) {
  uint32_t rank = 0, world = 1;
  {
    std::lock_guard lock(mutex_);
    Worker* w = nullptr;
    if (auto s = member_locked(request.worker_id(), request.attempt(), &w); !s.ok()) return s;
    rank = w->rank;
    world = planner_->shape().world_size;
  }
  *out = eval_micro_batches(planner_->samples(), eval_, rank, world, settings_.batch_size);
  return Status::OK;
}

Status Job::OpenStream(const herd::v1::StreamBatchesRequest& request) {
  std::lock_guard lock(mutex_);
  Worker* w = nullptr;
  if (auto s = member_locked(request.worker_id(), request.attempt(), &w); !s.ok()) return s;
  const uint64_t step = request.from_step();
  const uint64_t checkpoint = ledger_.checkpoint_step();
  if (step <= checkpoint || step > total_steps_) {
    return error(StatusCode::OUT_OF_RANGE, fmt::format("from_step {} is outside {}..{} (resume after checkpoint {})",
                                                       step, checkpoint + 1, total_steps_, checkpoint));
  }
  return Status::OK;
}

Job::StreamStep Job::NextStep(const herd::v1::StreamBatchesRequest& request, uint64_t step) {
  StreamStep out;
  std::vector<std::vector<size_t>> micro;
  uint64_t loss_tokens = 0;
  bool attempt_ends = false;
  {
    std::lock_guard lock(mutex_);
    auto end = [&](Status s) {
      out.end = std::move(s);
      return out;
    };
    if (shutdown_) return end(error(StatusCode::UNAVAILABLE, "the coordinator is shutting down"));
    if (terminal_locked()) {  // the stream's end tells the worker
      if (Worker* w = nullptr; roster_.find(request.worker_id(), &w).ok()) w->told = true;
    }
    if (state_ == herd::v1::DONE || state_ == herd::v1::STOPPED || step > total_steps_) return end(Status::OK);
    if (request.attempt() != attempt_ || state_ == herd::v1::RECOVERING) {
      return end(error(StatusCode::ABORTED, fmt::format("attempt {} is over{}: call WaitForGang", request.attempt(),
                                                        message_.empty() ? "" : " (" + message_ + ")")));
    }
    Worker* w = nullptr;
    if (auto s = member_locked(request.worker_id(), request.attempt(), &w); !s.ok()) return end(s);
    if (step > ledger_.committed_step() + settings_.lookahead_steps) return out;  // not yet
    const StepPlanner::Planned planned = planner_->step(step);
    micro = planned.plan.ranks[w->rank];
    loss_tokens = planned.loss_tokens;
    micro.resize(planner_->shape().gradient_accumulation_steps);  // a rank that ran out gets empty micro-batches
    attempt_ends = step == regrow_step_;
  }
  for (uint32_t m = 0; m < micro.size(); ++m) {
    herd::v1::MicroBatch& batch = out.batches.emplace_back(micro_batch(micro[m]));
    batch.set_step(step);
    batch.set_micro_step(m);
    batch.set_epoch((step - 1) / planner_->steps_per_epoch());
    batch.set_step_loss_tokens(loss_tokens);
    batch.set_attempt_ends(attempt_ends);
  }
  return out;
}

void Job::StreamLost(const herd::v1::StreamBatchesRequest& request, const std::string& reason) {
  std::lock_guard lock(mutex_);
  Worker* w = nullptr;
  if (shutdown_ || !member_locked(request.worker_id(), request.attempt(), &w).ok()) return;
  // Draining, a member that reported its share of a checkpoint leaves as asked: the
  // others' reports complete that checkpoint and stop the job there.
  if (drain_requested_ && ledger_.holds_checkpoint_share(w->rank)) return;
  try {
    mark_dead_locked(*w, reason, clock_());
  } catch (const JournalError&) {  // the job is FAILED and says why
  }
}

Status Job::ReportStep(const herd::v1::ReportStepRequest& request, herd::v1::ReportStepResponse* response) {
  if (!finite_nonnegative(request.loss())) {
    return error(StatusCode::INVALID_ARGUMENT, fmt::format("loss must be finite and >= 0, got {}", request.loss()));
  }
  const auto& t = request.timings();
  if (!finite_nonnegative(t.compute_seconds()) || !finite_nonnegative(t.communication_seconds()) ||
      !finite_nonnegative(t.data_wait_seconds())) {
    return error(StatusCode::INVALID_ARGUMENT, "timings must be finite and >= 0");
  }
  std::lock_guard lock(mutex_);
  Worker* w = nullptr;
  if (auto s = member_locked(request.worker_id(), request.attempt(), &w); !s.ok()) return s;
  const uint64_t step = request.step();
  if (step == 0 || step > total_steps_) {
    return error(StatusCode::OUT_OF_RANGE, fmt::format("step {} is outside 1..{}", step, total_steps_));
  }
  if (step != w->reported + 1) {
    return error(StatusCode::FAILED_PRECONDITION,
                 fmt::format("step {} is out of order: worker {} reported step {} last, expects {}", step, w->id,
                             w->reported, w->reported + 1));
  }
  w->reported = step;
  response->set_committed(false);
  const auto totals = ledger_.report_step(step, request.tokens(), request.loss(), roster_.gang().size());
  if (!totals) return Status::OK;

  // Every rank reported this step (ranks report in order, so steps commit in order).
  const StepPlan& plan = planner_->step(step).plan;
  const json samples = planner_->samples_of(plan);
  journal_locked(kStep, json{{"step", step}, {"attempt", attempt_}, {"loss", totals->loss}, {"tokens", totals->tokens},
                             {"samples", samples}}
                            .dump());
  ledger_.commit_step(step, totals->loss, plan.imbalance, clock_());
  changed_locked();
  response->set_committed(true);
  return Status::OK;
}

Status Job::CommitCheckpoint(const herd::v1::CommitCheckpointRequest& request,
                             herd::v1::CommitCheckpointResponse* response) {
  if (request.path().empty() || request.path().size() > kMaxPath) {
    return error(StatusCode::INVALID_ARGUMENT, fmt::format("path must have 1..{} bytes", kMaxPath));
  }
  if (!is_sha256_hex(request.digest())) {
    return error(StatusCode::INVALID_ARGUMENT, "digest must be a sha256: 64 lowercase hex digits");
  }
  if (!settings_.checkpoint_root.empty()) {
    const std::string expected = checkpoint_dir(settings_.checkpoint_root, request.step()).string();
    if (request.path() != expected) {
      return error(StatusCode::INVALID_ARGUMENT,
                   fmt::format("path must be {} (the job's trainer_output_dir, as its config gives it)", expected));
    }
  }
  std::lock_guard lock(mutex_);
  Worker* w = nullptr;
  if (auto s = member_locked(request.worker_id(), request.attempt(), &w); !s.ok()) return s;
  const uint64_t step = request.step();
  if (step <= ledger_.checkpoint_step()) {
    return error(StatusCode::FAILED_PRECONDITION, fmt::format("step {} is not after the last committed checkpoint ({})",
                                                              step, ledger_.checkpoint_step()));
  }
  if (step > w->reported) {
    return error(StatusCode::FAILED_PRECONDITION,
                 fmt::format("step {} is not reported by worker {} yet (it reported step {} last)", step, w->id,
                             w->reported));
  }
  response->set_committed(false);
  const auto shares =
      ledger_.report_checkpoint(step, w->rank, request.path(), request.digest(), roster_.gang().size());
  if (!shares) return Status::OK;

  json paths = json::array(), digests = json::array();
  for (const auto& share : *shares) {
    paths.push_back(share.path);
    digests.push_back(share.digest);
  }
  journal_locked(kCheckpoint,
                 json{{"step", step}, {"attempt", attempt_}, {"paths", paths}, {"digests", digests}}.dump());
  ledger_.commit_checkpoint(shares->front());
  response->set_committed(true);
  if (step == total_steps_) {
    for (const auto& id : roster_.gang()) {  // each reported its share of the last step's checkpoint
      Worker* member = nullptr;
      if (roster_.find(id, &member).ok()) member->told = true;
    }
    journal_locked(kDone, json{{"step", step}}.dump());
    set_state_locked(herd::v1::DONE, "");
  } else if (drain_requested_) {
    set_state_locked(herd::v1::STOPPED, fmt::format("drained at checkpoint {}", step));
  } else if (step == regrow_step_) {
    // Every rank stops here and waits for the larger gang: the members (each alive, or
    // the job would be RECOVERING) first, then the spares.
    const auto alive = roster_.alive_by_arrival();
    form_gang_locked(largest_gang_locked(alive.size()), alive, "regrow");
  } else {
    changed_locked();
  }
  return Status::OK;
}

// ---- People and operators ----------------------------------------------------

void Job::GetStatus(herd::v1::JobStatus* out, bool ranks) const {
  std::lock_guard lock(mutex_);
  const double now = clock_();
  out->set_job_id(settings_.job_id);
  out->set_state(state_);
  out->set_attempt(attempt_);
  out->set_world_size(settings_.world_size);
  out->set_registered_workers(static_cast<uint32_t>(roster_.alive()));
  const uint64_t committed = ledger_.committed_step();
  out->set_committed_step(committed);
  out->set_total_steps(total_steps_);
  out->set_message(message_);
  out->set_gang_size(static_cast<uint32_t>(roster_.gang().size()));
  out->set_checkpoint_step(ledger_.checkpoint_step());
  out->set_epoch(std::min(committed, total_steps_ - 1) / planner_->steps_per_epoch());
  out->set_last_loss(ledger_.last_loss());
  out->set_step_imbalance(ledger_.last_imbalance());
  out->set_gradient_accumulation_steps(static_cast<uint32_t>(planner_->shape().gradient_accumulation_steps));
  out->set_attempt_reason(attempt_reason_);
  out->set_regrow_step(regrow_step_);
  size_t members = 0;
  for (const auto& id : roster_.gang()) members += roster_.at(id).alive;
  out->set_spares(static_cast<uint32_t>(roster_.alive() - members));
  if (const auto eta = ledger_.eta_seconds(total_steps_); eta && training_locked()) out->set_eta_seconds(*eta);
  if (!ranks) return;
  for (const auto& id : roster_.gang()) {
    const Worker& w = roster_.at(id);
    auto* r = out->add_ranks();
    r->set_rank(w.rank);
    r->set_worker_id(w.id);
    r->set_host(w.host);
    r->set_step(w.reported);
    r->set_tokens_per_second(w.tokens_per_second);
    r->set_seconds_since_heartbeat(w.alive ? now - w.last_heartbeat : -1);
  }
}

Status Job::Drain(herd::v1::OperatorResponse* response) {
  std::lock_guard lock(mutex_);
  if (terminal_locked()) return error(StatusCode::FAILED_PRECONDITION, "the job is " + state_name(state_));
  drain_requested_ = true;
  if (training_locked()) {
    set_state_locked(herd::v1::DRAINING, "an operator asked to stop at the next checkpoint");
  } else {  // nothing runs: the last committed checkpoint is where a restart resumes
    set_state_locked(herd::v1::STOPPED, fmt::format("drained at checkpoint {}", ledger_.checkpoint_step()));
  }
  response->set_state(state_);
  return Status::OK;
}

Status Job::Cancel(const herd::v1::CancelRequest& request, herd::v1::OperatorResponse* response) {
  if (request.reason().size() > kMaxReason) {
    return error(StatusCode::INVALID_ARGUMENT, fmt::format("reason is longer than {} bytes", kMaxReason));
  }
  std::lock_guard lock(mutex_);
  if (state_ == herd::v1::DONE || state_ == herd::v1::FAILED) {
    return error(StatusCode::FAILED_PRECONDITION, "the job is " + state_name(state_));
  }
  const std::string reason = request.reason().empty() ? "no reason given" : request.reason();
  journal_locked(kCancel, json{{"reason", reason}}.dump());
  set_state_locked(herd::v1::FAILED, "cancelled: " + reason);
  response->set_state(state_);
  return Status::OK;
}

void Job::tick() {
  std::lock_guard lock(mutex_);
  const double now = clock_();
  try {
    for (Worker* w : roster_.overdue(now, settings_.heartbeat_timeout_s)) {
      mark_dead_locked(*w, fmt::format("missed its heartbeats for {:.1f} s (timeout {} s)", now - w->last_heartbeat,
                                       settings_.heartbeat_timeout_s),
                       now);
    }
    roster_.forget_dead(attempt_, now);
    try_form_gang_locked(now);
    try_regrow_locked(now);
  } catch (const JournalError&) {  // the job is FAILED and says why
  }
}

bool Job::everyone_told() const {
  std::lock_guard lock(mutex_);
  return terminal_locked() && roster_.all_told();
}

void Job::shutdown() {
  std::lock_guard lock(mutex_);
  shutdown_ = true;
  changed_locked();
}

}  // namespace herd::coordinator
