#include "worker/train/trainer.h"

#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <stdexcept>

#include <fmt/format.h>
#include <torch/torch.h>

#include "common/checkpoint_files.h"
#include "common/config.h"
#include "common/hf_cache.h"
#include "common/process_memory.h"
#include "worker/comm/collective.h"
#include "worker/comm/timed.h"
#include "worker/model/flops.h"
#include "worker/model/llama.h"
#include "worker/model/peft_adapter.h"
#include "worker/train/checkpoint.h"
#include "worker/train/memory_plan.h"
#include "worker/train/step.h"
#include "worker/train/telemetry.h"

#ifdef HERD_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace herd::train {

namespace v1 = herd::v1;

namespace {

// What training holds, counted as `herd plan` counts it: from just before the model
// is loaded to the peak after it is (the load's own transients left out). On a CPU
// the resident set: VmRSS before, VmHWM after (reset once the model is in); on a
// GPU the caching allocator's allocated bytes.
class TrainingMemory {
 public:
  explicit TrainingMemory(torch::Device device) : device_(device), baseline_(in_use(false)) {}

  void loaded() {
#ifdef HERD_CUDA
    if (device_.is_cuda()) {
      c10::cuda::CUDACachingAllocator::resetPeakStats(device_.index());
      return;
    }
#endif
    ::malloc_trim(0);  // what the load freed goes back, so that it does not count as training's
    load_peak_ = process_memory().peak_resident_bytes;
    reset_peak_memory();
  }

  double bytes() const { return in_use(true) - baseline_; }
  // The process's peak resident set, the load's included.
  uint64_t process_peak() const { return std::max(process_memory().peak_resident_bytes, load_peak_); }

 private:
  // In use now, or the peak since the last reset.
  double in_use(bool peak) const {
#ifdef HERD_CUDA
    if (device_.is_cuda()) {
      const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device_.index());
      return static_cast<double>(peak ? stats.allocated_bytes[0].peak : stats.allocated_bytes[0].current);
    }
#endif
    const ProcessMemory m = process_memory();
    return static_cast<double>(peak ? m.peak_resident_bytes : m.resident_bytes);
  }

  torch::Device device_;
  double baseline_;
  uint64_t load_peak_ = 0;
};

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Memory in use by kind: the process's resident set and, on a GPU, the caching
// allocator's figures.
std::map<std::string, double> memory_bytes(torch::Device device) {
  std::map<std::string, double> out;
  out["rss"] = static_cast<double>(process_memory().resident_bytes);
#ifdef HERD_CUDA
  if (device.is_cuda()) {
    const auto s = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    out["gpu_allocated"] = static_cast<double>(s.allocated_bytes[0].current);
    out["gpu_reserved"] = static_cast<double>(s.reserved_bytes[0].current);
    out["gpu_peak"] = static_cast<double>(s.allocated_bytes[0].peak);
  }
#endif
  (void)device;
  return out;
}

// Where this worker trains: trainer.device, with auto meaning the GPU named by
// LOCAL_RANK when one is visible.
torch::Device training_device(const Config& config, int local_rank) {
  const auto& d = config.trainer.device;
  if (d == "cpu" || (d == "auto" && !torch::cuda::is_available())) {
    if (config.trainer.offload_activations) {
      throw std::runtime_error("trainer.offload_activations moves activations from a GPU to host memory, and this "
                               "worker trains on the CPU, where they already are; set it to false");
    }
    return torch::kCPU;
  }
  const int64_t gpus = static_cast<int64_t>(torch::cuda::device_count());
  if (local_rank >= gpus) {
    const std::string visible = gpus == 0 ? "no GPU is" : gpus == 1 ? "only 1 is" : fmt::format("only {} are", gpus);
    throw std::runtime_error(
        fmt::format("trainer.device: {} wants GPU {} (LOCAL_RANK) but {} visible", d, local_rank, visible));
  }
  return {torch::kCUDA, static_cast<c10::DeviceIndex>(local_rank)};
}

// NCCL moves CUDA tensors; Gloo host memory, a GPU's tensors through host copies
// (slower: for GPUs NCCL cannot join, such as two ranks on one GPU).
std::string collective_backend(const Config& config, torch::Device device) {
  const auto& b = config.distributed.backend;
  if (b == "nccl" && device.is_cpu()) {
    throw std::runtime_error("distributed.backend: nccl needs the model on a GPU, and this worker trains on the "
                             "CPU (trainer.device); use gloo or auto");
  }
  if (b == "gloo") return b;
  return device.is_cuda() ? "nccl" : "gloo";
}

// The attempt's rendezvous store is the coordinator's (through the session).
class SessionStore : public comm::Store {
 public:
  explicit SessionStore(client::WorkerSession& session) : session_(session) {}
  void set(const std::string& key, const std::string& value) override {
    try {
      session_.kv_set(key, value);
    } catch (const client::CallError& e) {
      throw comm::CommError(e.what());
    }
  }
  std::string get(const std::string& key, std::chrono::milliseconds timeout) override {
    try {
      return session_.kv_get(key, timeout);
    } catch (const client::CallError& e) {
      throw comm::CommError(e.what());
    }
  }

 private:
  client::WorkerSession& session_;
};

// The device's dense peak for MFU: metrics.peak_tflops, else the GPU's by its name.
std::optional<double> peak_flops(const Config& config, torch::Device device) {
  if (config.metrics.peak_tflops > 0) return config.metrics.peak_tflops * 1e12;
#ifdef HERD_CUDA
  if (device.is_cuda()) return model::peak_flops(at::cuda::getDeviceProperties(device.index())->name);
#endif
  (void)device;
  return std::nullopt;
}

// This rank of `gang` on `device`: its collective over `store` (timed by
// operation), and the base model read from `base`.
comm::Timed* join_gang(Replica& r, const Config& config, torch::Device device, const std::filesystem::path& base,
                       comm::Store& store, const client::Gang& gang, const WorkerOptions& options) {
  comm::CollectiveOptions co;
  co.rank = static_cast<int>(gang.rank);
  co.size = static_cast<int>(gang.world_size);
  co.attempt = gang.attempt;
  co.timeout = std::chrono::milliseconds(static_cast<int64_t>(config.distributed.collective_timeout_s * 1000));
  co.hostname = options.gloo_hostname;
  co.device = options.local_rank;
  if (const char* iface = std::getenv("GLOO_SOCKET_IFNAME")) co.iface = iface;
  auto timed = std::make_unique<comm::Timed>(
      comm::connect(co.size > 1 ? collective_backend(config, device) : "local", store, co));
  comm::Timed* out = timed.get();
  build_replica(r, config, std::move(timed), load_options(config, device),
                [&](const model::LoadOptions& o) { return model::Llama::load(base, o); });
  return out;
}

// HERD_GPU_MEMORY_LIMIT (a size such as 22.4GiB): the caching allocator holds no
// more than this on the worker's GPU, as on a card of that size (to rehearse a
// smaller GPU, or to share one between ranks); beyond it allocations fail as out of
// memory.
void limit_gpu_memory(torch::Device device) {
  const char* text = std::getenv("HERD_GPU_MEMORY_LIMIT");
  if (text == nullptr || *text == '\0' || !device.is_cuda()) return;
  const auto bytes = parse_bytes(text);
  if (!bytes) throw std::runtime_error(fmt::format("HERD_GPU_MEMORY_LIMIT '{}' is not a size such as 22.4GiB", text));
#ifdef HERD_CUDA
  const auto total = static_cast<double>(at::cuda::getDeviceProperties(device.index())->totalGlobalMem);
  c10::cuda::CUDACachingAllocator::setMemoryFraction(std::min(1.0, *bytes / total), device.index());
  std::cout << fmt::format("{}: at most {:.2f} GiB of its {:.2f} GiB (HERD_GPU_MEMORY_LIMIT)", device.str(),
                           std::min(*bytes, total) / (1 << 30), total / (1 << 30))
            << std::endl;
#endif
}

}  // namespace

std::string training_device_name(const Config& config, int local_rank) {
  return training_device(config, local_rank).str();
}

namespace {

// The trainer as the gang loop's recipe: per gang, this rank's collective and share
// of the model (a Replica), resumed from the gang's checkpoint; per step, train_step
// at the schedule's learning rate; every figure to the run record (rank 0) and the
// Prometheus exporter.
class TrainerRecipe final : public client::Recipe {
 public:
  TrainerRecipe(const Config& config, client::WorkerSession& session, const WorkerOptions& options)
      : config_(config),
        options_(options),
        start_(std::chrono::steady_clock::now()),
        base_(resolve_hub_path(config.base_model, HubRepoType::Model, "base_model")),
        store_(session),
        device_(training_device(config, options.local_rank)),
        peak_((limit_gpu_memory(device_), peak_flops(config, device_))),
        record_(config, options.progress_bar, peak_) {
    if (config.metrics.enabled && config.metrics.worker_port > 0) {
      metrics_.emplace(static_cast<int>(config.metrics.worker_port) + options.local_rank, peak_);
    }
  }

  const TrainResult& result() const { return result_; }

  void setup(const client::Gang& gang) override {
    gang_ = gang;
    record_.begin(gang);
    memory_.emplace(device_);
    r_ = std::make_unique<Replica>();
    timed_ = join_gang(*r_, config_, device_, base_, store_, gang, options_);
    memory_->loaded();
    if (options_.on_gang) options_.on_gang(gang, r_->weights->shard_bytes(), r_->weights->model_bytes());
    if (metrics_) metrics_->attempt(gang.attempt, gang.rank);
    print_start();
    result_.steps.clear();
    if (gang.resume_step > 0) {
      result_.steps = load_checkpoint(gang.resume_checkpoint, *r_->model, *r_->optimizer);
      result_.resumed_from = gang.resume_step;
      record_.print(fmt::format("resuming from {} (step {})", gang.resume_checkpoint, gang.resume_step));
    }
  }

  void step(const std::vector<v1::MicroBatch>& batches, bool stop_requested, client::StepRecord& record) override {
    const double lr = learning_rate(config_, record.step, gang_.total_steps);
    const StepOutcome o = train_step(*r_, config_, batches, lr, stop_requested);
    record.loss = o.loss;
    record.learning_rate = lr;
    record.grad_norm = o.grad_norm;
    record.tokens = o.tokens;
    record.rank_tokens = o.rank_tokens;
    record.rank_samples = o.rank_samples;
    record.model_flops = o.flops.model;
    record.hardware_flops = o.flops.hardware;
    record.rank_model_flops = o.rank_flops.model;
    record.rank_hardware_flops = o.rank_flops.hardware;
    record.collective_seconds = timed_->take();
    if (metrics_) record.memory_bytes = memory_bytes(device_);
    record.stop = o.stop;
  }

  void recorded(const client::StepRecord& record) override {
    if (metrics_) {
      const auto export_start = std::chrono::steady_clock::now();
      metrics_->step(record);
      metrics_seconds_ += seconds_since(export_start);
    }
    result_.steps.push_back(step_log(record));
    result_.tokens += record.tokens;
    record_.step(record, seconds(), result_.tokens);
  }

  void eval(uint64_t step, const std::vector<v1::MicroBatch>& held_out) override {
    const EvalResult e = eval_loss(*r_->model, *r_->comm, held_out);
    result_.evals.emplace_back(step, e.loss);
    if (metrics_) metrics_->eval(e.loss);
    record_.eval(step, e.loss, e.samples);
  }

  client::CheckpointRef save_checkpoint(uint64_t step) override {
    const auto checkpoint_start = std::chrono::steady_clock::now();
    auto dir = checkpoint_dir(config_.trainer_output_dir, step);
    if (gang_.rank == 0) {
      const CheckpointMeta meta{config_.base_model, config_.lora.task_type, config_.lora.bias, gang_.steps_per_epoch,
                                gang_.total_steps};
      dir = write_checkpoint(config_.trainer_output_dir, step, *r_->model, *r_->optimizer, result_.steps, meta,
                             config_.checkpoint.keep_last);
      record_.checkpoint(step, dir);
    }
    r_->comm->barrier();  // rank 0's files are complete (a shared file system)
    if (metrics_) metrics_->checkpoint(seconds_since(checkpoint_start));
    return {dir.string(), checkpoint_digest(dir)};
  }

  void finish(uint64_t step, bool interrupted, uint64_t checkpoint) override {
    result_.seconds = seconds();
    if (interrupted) {
      result_.interrupted = true;
      record_.end("interrupted", {{"step", step}, {"checkpoint", checkpoint}, {"export_seconds", export_seconds()}},
                  fmt::format("interrupted after step {}, at checkpoint-{}; to resume: {}", step, checkpoint,
                              options_.resume_how));
      return;
    }
    result_.adapter_dir = config_.adapter_dir();
    if (gang_.rank == 0) {
      model::save_adapter(*r_->model, result_.adapter_dir, config_.base_model, config_.lora.task_type,
                          config_.lora.bias);
    }
    result_.peak_memory_bytes = memory_->process_peak();
    record_.end("done",
                {{"step", step},
                 {"steps", result_.steps.size()},
                 {"tokens", result_.tokens},
                 {"seconds", result_.seconds},
                 {"peak_memory_bytes", result_.peak_memory_bytes},
                 {"training_memory_bytes", memory_->bytes()},
                 {"export_seconds", export_seconds()},
                 {"adapter", result_.adapter_dir.string()}},
                fmt::format("done: {} steps in {}, {} tokens, {:.0f} tokens/s, peak memory {:.0f} MiB",
                            result_.steps.size(), clock_time(result_.seconds), result_.tokens,
                            static_cast<double>(result_.tokens) / result_.seconds,
                            static_cast<double>(result_.peak_memory_bytes) / (1 << 20)));
    record_.print("adapter: " + result_.adapter_dir.string());
  }

  void release() override {
    timed_ = nullptr;
    r_.reset();
  }

 private:
  double seconds() const { return seconds_since(start_); }
  // The training thread's time in the exporters.
  double export_seconds() const { return metrics_seconds_ + record_.export_seconds(); }

  void print_start() {
    int64_t trainable = 0;
    for (auto& p : r_->params) trainable += p.numel();
    record_.print(fmt::format("training {}: {} steps ({} per epoch), {} trainable parameters, {} base weights{}",
                              config_.model_name, gang_.total_steps, gang_.steps_per_epoch, trainable,
                              config_.quantization.enabled ? "NF4" : "dense",
                              gang_.world_size > 1
                                  ? fmt::format(", {} ranks ({}, {}, attempt {})", gang_.world_size,
                                                r_->comm->backend(), config_.distributed.sharding, gang_.attempt)
                                  : std::string()));
  }

  const Config& config_;
  const WorkerOptions& options_;
  const std::chrono::steady_clock::time_point start_;
  const std::filesystem::path base_;
  SessionStore store_;
  const torch::Device device_;
  const std::optional<double> peak_;
  RunRecord record_;
  std::optional<WorkerMetrics> metrics_;
  double metrics_seconds_ = 0;
  TrainResult result_;
  client::Gang gang_;
  std::unique_ptr<Replica> r_;
  comm::Timed* timed_ = nullptr;
  std::optional<TrainingMemory> memory_;
};

}  // namespace

TrainResult run_worker(const Config& config, client::WorkerSession& session, const WorkerOptions& options) {
  TrainerRecipe recipe(config, session, options);
  client::LoopOptions loop;
  loop.checkpoint_every = static_cast<uint64_t>(config.checkpoint.every_steps);
  loop.eval = true;
  loop.eval_every = config.trainer.eval_steps > 0 ? static_cast<uint64_t>(config.trainer.eval_steps) : 0;
  loop.stop = options.stop;
  loop.say = [](const std::string& line) { std::cout << line << std::endl; };
  client::run_gang_loop(session, recipe, loop);
  return recipe.result();
}

}  // namespace herd::train
