// The one place a run's progress goes: every step, eval and checkpoint becomes a
// line of {trainer_output_dir}/events.jsonl (one JSON object a line, every number
// at full precision, with the rank, the attempt and the wall time), the log line
// a person reads every trainer.logging_steps, the progress bar on a terminal, and
// TensorBoard's scalars (metrics.tensorboard: {trainer_output_dir}/runs/).
// Rank 0 records; the other ranks' records would repeat its figures (the loss and
// tokens of a step are sums over every rank).
//
// The events file holds the run as it stands: a fresh run starts it empty, and a
// run resumed from step S keeps the records up to S and drops the later ones (a
// recovery trains those steps again).
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "client/gang_loop.h"

namespace herd {
struct Config;
}

namespace herd::train {

class EventWriter;

// A step as trainer_state.json's log_history keeps it (checkpoint.h).
struct StepLog {
  uint64_t step = 0;
  double epoch = 0;  // fractional, as transformers logs it
  double loss = 0;   // token-weighted mean over the step's predicted tokens
  double learning_rate = 0;
  double grad_norm = 0;  // before clipping
  uint64_t tokens = 0;   // tokens in the step (padding excluded), every rank's
  double seconds = 0;    // the step's wall time
  double model_flops = 0, hardware_flops = 0;  // every rank's (worker/model/flops.h)
};

StepLog step_log(const client::StepRecord& record);

// "1:02:03" or "2:03".
std::string clock_time(double seconds);

class RunRecord {
 public:
  // `peak_flops`: one device's dense peak (FLOP/s), for MFU; none: no MFU.
  RunRecord(const Config& config, bool progress_bar, std::optional<double> peak_flops);
  ~RunRecord();

  // A gang's attempt starts (the events file is trimmed to its resume step).
  void begin(const client::Gang& gang);
  // A line for people, from rank 0.
  void print(const std::string& line);
  void step(const client::StepRecord& record, double seconds_since_start, uint64_t run_tokens);
  void eval(uint64_t step, double loss, uint64_t samples);
  void checkpoint(uint64_t step, const std::filesystem::path& dir);
  // The run's end: "done" or "interrupted", with its figures.
  void end(const std::string& event, nlohmann::json figures, const std::string& line);

  static std::filesystem::path events_file(const Config& config);
  // Seconds this process spent writing TensorBoard files.
  double export_seconds() const { return export_seconds_; }

 private:
  void write(const std::string& event, nlohmann::json record);
  void tensorboard(uint64_t step, const std::vector<std::pair<const char*, double>>& scalars);

  const std::filesystem::path file_;
  const int64_t logging_steps_;
  const bool progress_bar_;
  const std::optional<double> peak_flops_;
  const std::filesystem::path tensorboard_dir_;  // empty: none
  std::unique_ptr<EventWriter> tensorboard_;
  double export_seconds_ = 0;
  bool lead_ = false;
  client::Gang gang_;
  std::ofstream events_;
  double window_loss_ = 0;
  int64_t window_steps_ = 0;
};

}  // namespace herd::train
