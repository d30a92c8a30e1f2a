#include "client/gang_loop.h"

#include <algorithm>
#include <chrono>

#include <fmt/format.h>

#include "common/gang_error.h"

namespace herd::client {

namespace v1 = herd::v1;

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// One attempt of one gang: answers how the job ended for this worker, or nothing
// when the stream ended without the job's end (a later attempt goes on).
class Attempt {
 public:
  Attempt(WorkerSession& session, Recipe& recipe, const LoopOptions& options, const Gang& gang)
      : session_(session), recipe_(recipe), options_(options), gang_(gang), last_checkpoint_(gang.resume_step) {}

  LoopEnd run() {
    recipe_.setup(gang_);
    if (options_.eval) held_out_ = session_.eval_batches();
    session_.open_stream(gang_.resume_step + 1);
    for (uint64_t step = gang_.resume_step + 1; step <= gang_.total_steps; ++step) {
      const StepRecord record = train(step);
      if (!held_out_.empty() && (step == gang_.total_steps || due(step, options_.eval_every))) {
        recipe_.eval(step, held_out_);
      }
      if (record.stop && step < gang_.total_steps) {
        // Every rank saw the request in this step's sums: drain, then commit the
        // checkpoint that stops the job (STOPPED; a restart resumes from it).
        session_.drain();
        if (step > last_checkpoint_) checkpoint(step);
        session_.close_stream();
        recipe_.finish(step, true, last_checkpoint_);
        return LoopEnd::kInterrupted;
      }
      if (step == gang_.total_steps || due(step, options_.checkpoint_every) || attempt_ends_) checkpoint(step);
      if (attempt_ends_) {  // the coordinator forms a larger gang from this checkpoint (the stream stays
                            // open until then: a stream that ends is a member lost)
        throw AttemptOver(fmt::format("the gang regrows from the checkpoint of step {}", step));
      }
    }
    session_.close_stream();
    recipe_.finish(gang_.total_steps, false, last_checkpoint_);
    return LoopEnd::kDone;
  }

 private:
  static bool due(uint64_t step, uint64_t every) { return every > 0 && step % every == 0; }

  StepRecord train(uint64_t step) {
    const auto start = std::chrono::steady_clock::now();
    StepRecord r;
    r.attempt = gang_.attempt;
    r.step = step;
    r.total_steps = gang_.total_steps;
    r.resume_step = gang_.resume_step;
    r.steps_per_epoch = gang_.steps_per_epoch;
    r.rank = gang_.rank;
    r.world_size = gang_.world_size;
    r.epoch = static_cast<double>(step) / static_cast<double>(std::max<uint64_t>(gang_.steps_per_epoch, 1));
    const auto batches = session_.next_step(step);
    attempt_ends_ = std::any_of(batches.begin(), batches.end(), [](const auto& b) { return b.attempt_ends(); });
    r.data_wait_seconds = seconds_since(start);
    const bool stop_requested = (options_.stop && *options_.stop) || session_.draining();
    recipe_.step(batches, stop_requested, r);
    r.seconds = seconds_since(start);
    session_.report_step(step, r.loss, r.rank_tokens, step_timings(r));
    recipe_.recorded(r);
    return r;
  }

  void checkpoint(uint64_t step) {
    last_checkpoint_ = step;
    const CheckpointRef c = recipe_.save_checkpoint(step);
    session_.commit_checkpoint(step, c.path, c.digest);
  }

  WorkerSession& session_;
  Recipe& recipe_;
  const LoopOptions& options_;
  const Gang gang_;
  uint64_t last_checkpoint_;
  bool attempt_ends_ = false;  // this step's batches say the attempt ends at its checkpoint
  std::vector<v1::MicroBatch> held_out_;
};

}  // namespace

v1::StepTimings step_timings(const StepRecord& record) {
  v1::StepTimings t;
  t.set_compute_seconds(record.seconds - record.data_wait_seconds);
  t.set_data_wait_seconds(record.data_wait_seconds);
  double communication = 0;
  for (const auto& [op, s] : record.collective_seconds) communication += s;
  t.set_communication_seconds(communication);
  return t;
}

LoopEnd run_gang_loop(WorkerSession& session, Recipe& recipe, const LoopOptions& options) {
  auto say = [&](const std::string& line) {
    if (options.say) options.say(line);
  };
  session.join();
  for (uint64_t after = 0;;) {
    const Gang gang = session.wait_for_gang(after);
    session.close_stream();  // the previous attempt's, now that a new gang formed
    after = gang.attempt;
    struct Release {
      Recipe& recipe;
      ~Release() { recipe.release(); }
    } release{recipe};
    try {
      return Attempt(session, recipe, options, gang).run();
    } catch (const AttemptOver& e) {
      say(fmt::format("attempt {} is over ({}); waiting for the next gang", gang.attempt, e.what()));
    } catch (const GangError& e) {
      // Every member may still look alive to the coordinator: say the attempt failed.
      say(fmt::format("attempt {}: {}; waiting for the next gang", gang.attempt, e.what()));
      session.report_failure(e.what());
    } catch (const JobOver&) {
      throw;
    } catch (const std::exception& e) {
      // This worker cannot go on (its set-up or a step failed here): the coordinator
      // hears it now rather than after the heartbeat timeout.
      session.report_failure(e.what(), true);
      throw;
    }
  }
}

}  // namespace herd::client
