#include "worker/train/run_record.h"

#include <chrono>
#include <iostream>
#include <vector>

#include <fmt/format.h>

#include "common/config.h"
#include "common/files.h"
#include "worker/model/flops.h"
#include "worker/train/tensorboard.h"

namespace herd::train {

namespace fs = std::filesystem;
using nlohmann::json;

StepLog step_log(const client::StepRecord& r) {
  return {r.step, r.epoch, r.loss, r.learning_rate, r.grad_norm, r.tokens, r.seconds, r.model_flops, r.hardware_flops};
}

std::string clock_time(double seconds) {
  const auto s = static_cast<int64_t>(seconds);
  return s >= 3600 ? fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
                   : fmt::format("{}:{:02}", s / 60, s % 60);
}

namespace {

double wall_time() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

fs::path RunRecord::events_file(const Config& config) { return fs::path(config.trainer_output_dir) / "events.jsonl"; }

RunRecord::RunRecord(const Config& config, bool progress_bar, std::optional<double> peak_flops)
    : file_(events_file(config)),
      logging_steps_(config.trainer.logging_steps),
      progress_bar_(progress_bar),
      peak_flops_(peak_flops),
      tensorboard_dir_(config.metrics.tensorboard ? fs::path(config.trainer_output_dir) / "runs" : fs::path()) {}

RunRecord::~RunRecord() = default;

void RunRecord::begin(const client::Gang& gang) {
  gang_ = gang;
  lead_ = gang.rank == 0;
  window_loss_ = 0;
  window_steps_ = 0;
  events_.close();
  if (!lead_) return;
  // Keep what happened up to the resume step; the steps after it are trained again.
  std::vector<std::string> kept;
  if (gang.resume_step > 0) {
    std::ifstream in(file_);
    for (std::string line; std::getline(in, line);) {
      const json j = json::parse(line, nullptr, false);
      if (j.is_object() && j.value("step", uint64_t{0}) <= gang.resume_step) kept.push_back(line);
    }
  }
  fs::create_directories(file_.parent_path());
  const fs::path tmp = file_.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    for (const auto& line : kept) out << line << "\n";
    close_file(out, tmp);
  }
  fs::rename(tmp, file_);
  events_.open(file_, std::ios::app);
  write("attempt", {{"step", gang.resume_step}, {"reason", gang.reason}, {"accumulation", gang.accumulation}});
  if (!tensorboard_ && !tensorboard_dir_.empty()) tensorboard_ = std::make_unique<EventWriter>(tensorboard_dir_);
}

void RunRecord::tensorboard(uint64_t step, const std::vector<std::pair<const char*, double>>& scalars) {
  if (!lead_ || !tensorboard_) return;
  const auto start = std::chrono::steady_clock::now();
  for (const auto& [tag, value] : scalars) tensorboard_->scalar(tag, step, value);
  tensorboard_->flush();
  export_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void RunRecord::write(const std::string& event, json record) {
  if (!lead_) return;
  record["event"] = event;
  record["rank"] = gang_.rank;
  record["world_size"] = gang_.world_size;
  record["attempt"] = gang_.attempt;
  record["time"] = wall_time();
  events_ << record.dump() << "\n" << std::flush;
}

void RunRecord::print(const std::string& line) {
  if (!lead_) return;
  if (progress_bar_) std::cerr << "\r\033[K";
  std::cout << line << "\n" << std::flush;
}

void RunRecord::step(const client::StepRecord& s, double seconds, uint64_t run_tokens) {
  const double tokens_per_second = s.seconds > 0 ? static_cast<double>(s.tokens) / s.seconds : 0;
  json record = {{"step", s.step},
                 {"epoch", s.epoch},
                 {"loss", s.loss},
                 {"learning_rate", s.learning_rate},
                 {"grad_norm", s.grad_norm},
                 {"tokens", s.tokens},
                 {"seconds", s.seconds},
                 {"tokens_per_second", tokens_per_second},
                 {"model_flops", s.model_flops},
                 {"hardware_flops", s.hardware_flops},
                 {"elapsed", seconds}};
  std::optional<double> mfu;
  if (peak_flops_ && s.seconds > 0) {
    mfu = model::mfu(s.model_flops, s.seconds, *peak_flops_ * gang_.world_size);
    record["mfu"] = *mfu;
  }
  write("step", std::move(record));
  std::vector<std::pair<const char*, double>> scalars = {{"train/loss", s.loss},
                                                         {"train/learning_rate", s.learning_rate},
                                                         {"train/grad_norm", s.grad_norm},
                                                         {"train/tokens_per_second", tokens_per_second}};
  if (mfu) scalars.emplace_back("train/mfu", *mfu);
  tensorboard(s.step, scalars);
  window_loss_ += s.loss;
  ++window_steps_;
  const uint64_t total = gang_.total_steps;
  if (static_cast<int64_t>(s.step) % logging_steps_ == 0 || s.step == total) {
    const double done = static_cast<double>(s.step - gang_.resume_step);
    print(fmt::format("step {}/{}  epoch {:.2f}  loss {:.4f}  lr {:.3g}  grad_norm {:.4f}  tokens/s {:.0f}  "
                      "{}elapsed {}  eta {}",
                      s.step, total, s.epoch, window_loss_ / static_cast<double>(window_steps_), s.learning_rate,
                      s.grad_norm, static_cast<double>(run_tokens) / seconds,
                      mfu ? fmt::format("mfu {:.1f}%  ", 100 * *mfu) : "", clock_time(seconds),
                      clock_time(seconds / done * static_cast<double>(total - s.step))));
    window_loss_ = 0;
    window_steps_ = 0;
  }
  if (progress_bar_ && lead_) {
    const int width = 30, filled = static_cast<int>(width * s.step / total);
    std::cerr << fmt::format("\r[{}{}] {}/{} loss {:.4f} lr {:.3g}", std::string(static_cast<size_t>(filled), '#'),
                             std::string(static_cast<size_t>(width - filled), ' '), s.step, total, s.loss,
                             s.learning_rate)
              << std::flush;
  }
}

void RunRecord::eval(uint64_t step, double loss, uint64_t samples) {
  write("eval", {{"step", step}, {"eval_loss", loss}, {"samples", samples}});
  tensorboard(step, {{"eval/loss", loss}});
  print(fmt::format("eval  step {}/{}  eval_loss {:.4f}  ({} held-out samples)", step, gang_.total_steps, loss,
                    samples));
}

void RunRecord::checkpoint(uint64_t step, const fs::path& dir) {
  write("checkpoint", {{"step", step}, {"path", dir.string()}});
}

void RunRecord::end(const std::string& event, json figures, const std::string& line) {
  write(event, std::move(figures));
  print(line);
}

}  // namespace herd::train
