#include "worker/train/trainer.h"

#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

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

uint64_t peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<uint64_t>(u.ru_maxrss) * 1024;
}

// What training holds, counted as `herd plan` counts it: from just before the model
// is loaded to the peak after it is (the load's own transients left out). On a CPU
// the resident set: VmRSS before, VmHWM after (reset once the model is in, through
// /proc/self/clear_refs); on a GPU the caching allocator's allocated bytes.
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
    load_peak_ = status_bytes("VmHWM:");
    std::ofstream("/proc/self/clear_refs") << "5";  // also resets getrusage's ru_maxrss
  }

  double bytes() const { return in_use(true) - baseline_; }
  // The process's peak resident set, the load's included.
  uint64_t process_peak() const { return std::max(peak_rss_bytes(), static_cast<uint64_t>(load_peak_)); }

 private:
  // In use now, or the peak since the last reset.
  double in_use(bool peak) const {
#ifdef HERD_CUDA
    if (device_.is_cuda()) {
      const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device_.index());
      return static_cast<double>(peak ? stats.allocated_bytes[0].peak : stats.allocated_bytes[0].current);
    }
#endif
    return status_bytes(peak ? "VmHWM:" : "VmRSS:");
  }
  static double status_bytes(const std::string& key) {
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);) {
      if (line.rfind(key, 0) == 0) return std::stod(line.substr(key.size())) * 1024;
    }
    return 0;
  }

  torch::Device device_;
  double baseline_;
  double load_peak_ = 0;
};

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Memory in use by kind: the process's resident set and, on a GPU, the caching
// allocator's figures.
std::map<std::string, double> memory_bytes(torch::Device device) {
  std::map<std::string, double> out;
  std::ifstream statm("/proc/self/statm");
  uint64_t pages = 0, resident = 0;
  if (statm >> pages >> resident) out["rss"] = static_cast<double>(resident) * static_cast<double>(::sysconf(_SC_PAGESIZE));
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

TrainResult run_worker(const Config& config, client::WorkerSession& session, const WorkerOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
  const auto base = resolve_hub_path(config.base_model, HubRepoType::Model, "base_model");
  session.join();
  SessionStore store(session);
  const torch::Device device = training_device(config, options.local_rank);
  limit_gpu_memory(device);
  const std::optional<double> peak = peak_flops(config, device);
  RunRecord record(config, options.progress_bar, peak);
  std::optional<WorkerMetrics> metrics;
  double metrics_seconds = 0;  // the training thread's time in the exporter
  auto export_seconds = [&] { return metrics_seconds + record.export_seconds(); };
  if (config.metrics.enabled && config.metrics.worker_port > 0) {
    metrics.emplace(static_cast<int>(config.metrics.worker_port) + options.local_rank, peak);
  }

  TrainResult result;
  uint64_t after = 0;  // the attempt this worker last trained in
  for (;;) {
    const client::Gang gang = session.wait_for_gang(after);
    session.close_stream();  // the previous attempt's, now that a new gang formed
    after = gang.attempt;
    record.begin(gang);
    const bool lead = gang.rank == 0;
    const uint64_t total = gang.total_steps;
    Replica r;
    comm::Timed* timed = nullptr;
    TrainingMemory memory(device);
    try {
      timed = join_gang(r, config, device, base, store, gang, options);
      memory.loaded();
    } catch (const comm::CommError& e) {
      std::cout << fmt::format("attempt {}: {}; waiting for the next gang", gang.attempt, e.what()) << std::endl;
      session.report_failure(e.what());
      continue;
    }
    if (options.on_gang) options.on_gang(gang, r.weights->shard_bytes(), r.weights->model_bytes());
    if (metrics) metrics->attempt(gang.attempt, gang.rank);
    int64_t trainable = 0;
    for (auto& p : r.params) trainable += p.numel();
    record.print(fmt::format("training {}: {} steps ({} per epoch), {} trainable parameters, {} base weights{}",
                             config.model_name, total, gang.steps_per_epoch, trainable,
                             config.quantization.enabled ? "NF4" : "dense",
                             gang.world_size > 1
                                 ? fmt::format(", {} ranks ({}, {}, attempt {})", gang.world_size, r.comm->backend(),
                                               config.distributed.sharding, gang.attempt)
                                 : std::string()));
    result.steps.clear();
    if (gang.resume_step > 0) {
      result.steps = load_checkpoint(gang.resume_checkpoint, *r.model, *r.optimizer);
      result.resumed_from = gang.resume_step;
      record.print(fmt::format("resuming from {} (step {})", gang.resume_checkpoint, gang.resume_step));
    }
    const CheckpointMeta meta{config.base_model, config.lora.task_type, config.lora.bias, gang.steps_per_epoch, total};
    uint64_t last_checkpoint = gang.resume_step;
    auto checkpoint = [&](uint64_t step) {
      const auto checkpoint_start = std::chrono::steady_clock::now();
      last_checkpoint = step;
      auto dir = checkpoint_dir(config.trainer_output_dir, step);
      if (lead) {
        dir = write_checkpoint(config.trainer_output_dir, step, *r.model, *r.optimizer, result.steps, meta,
                               config.checkpoint.keep_last);
        record.checkpoint(step, dir);
      }
      r.comm->barrier();  // rank 0's files are complete (a shared file system)
      session.commit_checkpoint(step, dir.string(), checkpoint_digest(dir));
      if (metrics) metrics->checkpoint(seconds_since(checkpoint_start));
    };

    try {
      const auto held_out = session.eval_batches();
      session.open_stream(gang.resume_step + 1);
      for (uint64_t step = gang.resume_step + 1; step <= total; ++step) {
        const auto step_start = std::chrono::steady_clock::now();
        const auto batches = session.next_step(step);
        const double data_wait = seconds_since(step_start);
        const double lr = learning_rate(config, step, total);
        const bool stop_requested = (options.stop && *options.stop) || session.draining();
        const StepOutcome o = train_step(r, config, batches, lr, stop_requested);
        const double step_seconds = seconds_since(step_start);
        const StepLog log{step,        static_cast<double>(step) / static_cast<double>(gang.steps_per_epoch),
                          o.loss,      lr, o.grad_norm, o.tokens, step_seconds, o.flops.model, o.flops.hardware};
        v1::StepTimings timings;
        timings.set_compute_seconds(step_seconds - data_wait);
        timings.set_data_wait_seconds(data_wait);
        const auto collectives = timed->take();
        for (const auto& [op, s] : collectives) timings.set_communication_seconds(timings.communication_seconds() + s);
        if (metrics) {
          const auto export_start = std::chrono::steady_clock::now();
          metrics->step({step, log.epoch, o.loss, lr, o.grad_norm, o.rank_tokens, o.rank_samples, o.rank_flops.model,
                         o.rank_flops.hardware, step_seconds, data_wait, collectives, memory_bytes(device)});
          metrics_seconds += seconds_since(export_start);
        }
        session.report_step(step, log.loss, o.rank_tokens, timings);
        result.steps.push_back(log);
        result.tokens += o.tokens;
        record.step(log, seconds(), result.tokens);
        const bool eval_due = config.trainer.eval_steps > 0
                                  ? step % static_cast<uint64_t>(config.trainer.eval_steps) == 0
                                  : step == total;
        // Every rank gets as many eval micro-batches: none on one means none on all.
        if (!held_out.empty() && (eval_due || step == total)) {
          const EvalResult e = eval_loss(*r.model, *r.comm, held_out);
          result.evals.emplace_back(step, e.loss);
          if (metrics) metrics->eval(e.loss);
          record.eval(step, e.loss, e.samples);
        }
        if (o.stop && step < total) {
          // Every rank saw the flag in this step's sums: drain, then commit the
          // checkpoint that stops the job (STOPPED; a restart resumes from it).
          session.drain();
          if (step > last_checkpoint) checkpoint(step);
          result.interrupted = true;
          result.seconds = seconds();
          session.close_stream();
          record.end("interrupted",
                     {{"step", step}, {"checkpoint", last_checkpoint}, {"export_seconds", export_seconds()}},
                     fmt::format("interrupted after step {}: `herd train CONFIG --resume` continues from checkpoint-{}",
                                 step, last_checkpoint));
          return result;
        }
        if (step == total || step % static_cast<uint64_t>(config.checkpoint.every_steps) == 0) checkpoint(step);
      }
    } catch (const client::AttemptOver& e) {
      std::cout << fmt::format("attempt {} is over ({}); waiting for the next gang", gang.attempt, e.what())
                << std::endl;
      continue;
    } catch (const comm::CommError& e) {
      // Every member may still look alive to the coordinator: say the attempt failed.
      std::cout << fmt::format("attempt {}: {}; waiting for the next gang", gang.attempt, e.what()) << std::endl;
      session.report_failure(e.what());
      continue;
    }
    session.close_stream();
    result.adapter_dir = config.adapter_dir();
    if (lead) {
      model::save_adapter(*r.model, result.adapter_dir, config.base_model, config.lora.task_type, config.lora.bias);
    }
    result.seconds = seconds();
    result.peak_memory_bytes = memory.process_peak();
    record.end("done",
               {{"step", total},
                {"steps", result.steps.size()},
                {"tokens", result.tokens},
                {"seconds", result.seconds},
                {"peak_memory_bytes", result.peak_memory_bytes},
                {"training_memory_bytes", memory.bytes()},
                {"export_seconds", export_seconds()},
                {"adapter", result.adapter_dir.string()}},
               fmt::format("done: {} steps in {}, {} tokens, {:.0f} tokens/s, peak memory {:.0f} MiB",
                           result.steps.size(), clock_time(result.seconds), result.tokens,
                           static_cast<double>(result.tokens) / result.seconds,
                           static_cast<double>(result.peak_memory_bytes) / (1 << 20)));
    record.print("adapter: " + result.adapter_dir.string());
    return result;
  }
}

}  // namespace herd::train
