#include "worker/train/trainer.h"

#include <malloc.h>
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <optional>
#include <stdexcept>

#include <fmt/format.h>
#include <torch/torch.h>

#include "common/checkpoint_files.h"
#include "common/config.h"
#include "common/hf_cache.h"
#include "worker/comm/collective.h"
#include "worker/model/llama.h"
#include "worker/model/peft_adapter.h"
#include "worker/train/checkpoint.h"
#include "worker/train/fused_adamw.h"
#include "worker/train/lr_schedule.h"
#include "worker/train/sharding.h"

namespace herd::train {

namespace v1 = herd::v1;

namespace {

torch::ScalarType compute_dtype(const std::string& name) {
  if (name == "bfloat16") return torch::kBFloat16;
  if (name == "float16") return torch::kFloat16;
  return torch::kFloat32;
}

uint64_t peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<uint64_t>(u.ru_maxrss) * 1024;
}

// Next-token cross-entropy of one micro-batch, summed over the positions its mask
// counts; `tokens` gains the rows' real tokens, `predicted` the positions counted.
// A micro-batch without rows (this rank ran out in an epoch's short last step)
// becomes one row whose loss counts nothing, so the rank still takes part in every
// collective of the forward and backward.
torch::Tensor micro_batch_loss(const model::Llama& model, const v1::MicroBatch& batch, uint64_t* tokens,
                               uint64_t* predicted = nullptr) {
  const int64_t rows = batch.sample_ids_size();
  if (rows == 0) {
    auto ids = torch::zeros({1, 2}, torch::TensorOptions().dtype(torch::kInt64).device(model.device()));
    auto logits = model.forward(ids);
    return logits.sum() * 0.0;
  }
  const int64_t width = batch.token_ids_size() / rows;
  const auto device = model.device();
  auto ids = torch::from_blob(const_cast<int32_t*>(batch.token_ids().data()), {rows, width}, torch::kInt32)
                 .to(device, torch::kInt64);
  auto mask = torch::from_blob(const_cast<char*>(batch.loss_mask().data()), {rows, width}, torch::kUInt8)
                  .to(device, torch::kFloat32)
                  .slice(1, 1)
                  .reshape({-1});
  for (int64_t r = 0; r < rows; ++r) *tokens += batch.lengths(static_cast<int>(r));
  if (predicted) *predicted += static_cast<uint64_t>(mask.sum().item<double>());
  // Rows are right-padded: under the causal mask no real token sees the padding, so
  // the plain causal attention gives every counted position the logits that an
  // attention mask would (and runs the fused kernels).
  return (model.next_token_loss(ids).reshape({-1}) * mask).sum();
}

// Mean next-token loss over the held-out split (masked tokens only), without
// dropout or gradients: each rank's share, summed over the ranks. Also answers how
// many samples the split has.
std::pair<double, uint64_t> eval_loss(model::Llama& model, comm::Collective& comm,
                                      const std::vector<v1::MicroBatch>& batches) {
  torch::NoGradGuard no_grad;
  model.set_training(false);
  double sum = 0;
  uint64_t tokens = 0, predicted = 0, samples = 0;
  for (const auto& batch : batches) {
    sum += micro_batch_loss(model, batch, &tokens, &predicted).item<double>();
    samples += static_cast<uint64_t>(batch.sample_ids_size());
  }
  model.set_training(true);
  auto totals = torch::tensor({sum, static_cast<double>(predicted), static_cast<double>(samples)}, torch::kFloat64);
  comm.all_reduce(totals).wait();
  const double all_predicted = totals[1].item<double>();
  return {all_predicted > 0 ? totals[0].item<double>() / all_predicted : 0.0,
          static_cast<uint64_t>(totals[2].item<double>())};
}

// Where this worker trains: trainer.device, with auto meaning the GPU named by
// LOCAL_RANK when one is visible.
torch::Device training_device(const Config& config, int local_rank) {
  const auto& d = config.trainer.device;
  if (d == "cpu" || (d == "auto" && !torch::cuda::is_available())) return torch::kCPU;
  const int64_t gpus = static_cast<int64_t>(torch::cuda::device_count());
  if (local_rank >= gpus) {
    const std::string visible = gpus == 0 ? "no GPU is" : gpus == 1 ? "only 1 is" : fmt::format("only {} are", gpus);
    throw std::runtime_error(
        fmt::format("trainer.device: {} wants GPU {} (LOCAL_RANK) but {} visible", d, local_rank, visible));
  }
  return {torch::kCUDA, static_cast<c10::DeviceIndex>(local_rank)};
}

// Gloo moves CPU tensors, NCCL CUDA tensors.
std::string collective_backend(const Config& config, torch::Device device) {
  const auto& b = config.distributed.backend;
  if (b == "nccl" && device.is_cpu()) {
    throw std::runtime_error("distributed.backend: nccl needs the model on a GPU, and this worker trains on the "
                             "CPU (trainer.device); use gloo or auto");
  }
  if (b == "gloo" && device.is_cuda()) {
    throw std::runtime_error("distributed.backend: gloo moves CPU tensors, and this worker trains on " +
                             device.str() + "; use nccl or auto, or trainer.device: cpu");
  }
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

// What one gang attempt trains with. Members are declared in the order they must
// be built; they are destroyed in reverse (the weights let go of the model first).
struct Replica {
  std::unique_ptr<comm::Collective> comm;
  std::optional<model::Llama> model;
  std::unique_ptr<ShardedWeights> weights;
  std::vector<torch::Tensor> params;
  std::unique_ptr<torch::optim::AdamW> optimizer;
};

void build_replica(Replica& r, const Config& config, const std::filesystem::path& base, comm::Store& store,
                   const client::Gang& gang, const WorkerOptions& options) {
  comm::CollectiveOptions co;
  co.rank = static_cast<int>(gang.rank);
  co.size = static_cast<int>(gang.world_size);
  co.attempt = gang.attempt;
  co.timeout = std::chrono::milliseconds(static_cast<int64_t>(config.distributed.collective_timeout_s * 1000));
  co.hostname = options.gloo_hostname;
  co.device = options.local_rank;
  if (const char* iface = std::getenv("GLOO_SOCKET_IFNAME")) co.iface = iface;
  const torch::Device device = training_device(config, options.local_rank);
  r.comm = comm::connect(co.size > 1 ? collective_backend(config, device) : "local", store, co);
  r.weights = std::make_unique<ShardedWeights>(*r.comm, parse_sharding(config.distributed.sharding));

  torch::manual_seed(static_cast<uint64_t>(config.trainer.seed));  // LoRA dropout
  model::LoadOptions load;
  load.quantize = config.quantization.enabled;
  load.double_quant = config.quantization.double_quant;
  load.compute_dtype = compute_dtype(config.quantization.compute_dtype);
  load.activation_dtype = config.trainer.bf16 ? torch::kBFloat16 : torch::kFloat32;
  load.device = device;
  model::LoraOptions lora;
  lora.r = config.lora.r;
  lora.lora_alpha = config.lora.lora_alpha;
  lora.dropout = config.lora.lora_dropout;
  lora.use_rslora = config.lora.use_rslora;
  lora.target_modules = config.lora.target_modules;
  lora.seed = static_cast<uint64_t>(config.trainer.seed);
  load.lora = lora;
  load.on_layer = [w = r.weights.get()](int64_t i, model::DecoderLayer& layer) { w->adopt_layer(i, layer); };
  r.model.emplace(model::Llama::load(base, load));
  r.weights->attach(*r.model);
  ::malloc_trim(0);  // hand the freed parts of every layer back to the system
  r.model->set_training(true);
  r.model->set_activation_checkpointing(config.trainer.gradient_checkpointing);
  r.params = r.model->trainable_parameters();
  for (auto& p : r.params) p.set_requires_grad(true);
  r.optimizer = std::make_unique<FusedAdamW>(
      r.params, torch::optim::AdamWOptions(config.trainer.learning_rate)
                    .betas({config.trainer.adam_beta1, config.trainer.adam_beta2})
                    .eps(config.trainer.adam_epsilon)
                    .weight_decay(config.trainer.weight_decay));
}

// One optimizer step: this rank's micro-batches in; the step's loss, tokens and
// grad norm out, summed over every rank, and whether any rank asked to stop.
struct StepOutcome {
  double loss = 0;  // token-weighted mean over the step's predicted tokens
  uint64_t tokens = 0, rank_tokens = 0;
  double grad_norm = 0;
  bool stop = false;
};

StepOutcome train_step(Replica& r, const Config& config, const std::vector<v1::MicroBatch>& batches, double lr,
                       bool stop_requested) {
  for (auto& group : r.optimizer->param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
  r.optimizer->zero_grad();
  const double normaliser = static_cast<double>(std::max<uint64_t>(1, batches.front().step_loss_tokens()));
  const bool alone = r.comm->size() == 1;
  torch::Tensor loss_sum;  // on the device: read once a step, not once a micro-batch
  StepOutcome out;
  for (size_t m = 0; m < batches.size(); ++m) {
    if (batches[m].sample_ids_size() == 0 && alone) continue;
    r.weights->set_sync_gradients(m + 1 == batches.size());
    auto loss = micro_batch_loss(*r.model, batches[m], &out.rank_tokens);
    (loss / normaliser).backward();
    const auto value = loss.detach().to(torch::kFloat64);
    loss_sum = loss_sum.defined() ? loss_sum + value : value;
  }
  r.weights->finish_gradients();
  if (!r.model->activation_checkpointing()) r.weights->release_all();
  auto totals = torch::tensor({loss_sum.defined() ? loss_sum.item<double>() : 0.0,
                               static_cast<double>(out.rank_tokens), stop_requested ? 1.0 : 0.0},
                              torch::kFloat64);
  r.comm->all_reduce(totals).wait();
  out.grad_norm = clip_grad_norm(r.params, config.trainer.max_grad_norm > 0 ? config.trainer.max_grad_norm
                                                                           : std::numeric_limits<double>::infinity());
  r.optimizer->step();
  out.loss = totals[0].item<double>() / normaliser;
  out.tokens = static_cast<uint64_t>(totals[1].item<double>());
  out.stop = totals[2].item<double>() > 0;
  return out;
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
  RunRecord record(config, options.progress_bar);

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
    try {
      build_replica(r, config, base, store, gang, options);
    } catch (const comm::CommError& e) {
      std::cout << fmt::format("attempt {}: {}; waiting for the next gang", gang.attempt, e.what()) << std::endl;
      session.report_failure(e.what());
      continue;
    }
    if (options.on_gang) options.on_gang(gang, r.weights->shard_bytes(), r.weights->model_bytes());
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
      last_checkpoint = step;
      auto dir = checkpoint_dir(config.trainer_output_dir, step);
      if (lead) {
        dir = write_checkpoint(config.trainer_output_dir, step, *r.model, *r.optimizer, result.steps, meta,
                               config.checkpoint.keep_last);
        record.checkpoint(step, dir);
      }
      r.comm->barrier();  // rank 0's files are complete (a shared file system)
      session.commit_checkpoint(step, dir.string(), checkpoint_digest(dir));
    };

    try {
      const auto held_out = session.eval_batches();
      session.open_stream(gang.resume_step + 1);
      for (uint64_t step = gang.resume_step + 1; step <= total; ++step) {
        const auto step_start = std::chrono::steady_clock::now();
        const auto batches = session.next_step(step);
        const double lr = config.trainer.learning_rate *
                          lr_factor(config.trainer.lr_scheduler, static_cast<int64_t>(step) - 1,
                                    config.trainer.warmup_steps, static_cast<int64_t>(total));
        const bool stop_requested = (options.stop && *options.stop) || session.draining();
        const StepOutcome o = train_step(r, config, batches, lr, stop_requested);
        const StepLog log{step, static_cast<double>(step) / static_cast<double>(gang.steps_per_epoch), o.loss, lr,
                          o.grad_norm, o.tokens};
        v1::StepTimings timings;
        timings.set_compute_seconds(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count());
        session.report_step(step, log.loss, o.rank_tokens, timings);
        result.steps.push_back(log);
        result.tokens += o.tokens;
        record.step(log, seconds(), result.tokens);
        const bool eval_due = config.trainer.eval_steps > 0
                                  ? step % static_cast<uint64_t>(config.trainer.eval_steps) == 0
                                  : step == total;
        // Every rank gets as many eval micro-batches: none on one means none on all.
        if (!held_out.empty() && (eval_due || step == total)) {
          const auto [loss, samples] = eval_loss(*r.model, *r.comm, held_out);
          result.evals.emplace_back(step, loss);
          record.eval(step, loss, samples);
        }
        if (o.stop && step < total) {
          // Every rank saw the flag in this step's sums: drain, then commit the
          // checkpoint that stops the job (STOPPED; a restart resumes from it).
          session.drain();
          if (step > last_checkpoint) checkpoint(step);
          result.interrupted = true;
          result.seconds = seconds();
          session.close_stream();
          record.end("interrupted", {{"step", step}, {"checkpoint", last_checkpoint}},
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
    result.peak_memory_bytes = peak_rss_bytes();
    record.end("done",
               {{"step", total},
                {"steps", result.steps.size()},
                {"tokens", result.tokens},
                {"seconds", result.seconds},
                {"peak_memory_bytes", result.peak_memory_bytes},
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
