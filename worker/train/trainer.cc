#include "worker/train/trainer.h"

#include <malloc.h>
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <optional>
#include <stdexcept>

#include <fmt/format.h>
#include <torch/torch.h>

#include "common/config.h"
#include "common/hf_cache.h"
#include "common/token_cache.h"
#include "coordinator/job.h"
#include "worker/comm/collective.h"
#include "worker/model/llama.h"
#include "worker/model/peft_adapter.h"
#include "worker/train/checkpoint.h"
#include "worker/train/fused_adamw.h"
#include "worker/train/link.h"
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

std::string clock_time(double seconds) {
  const auto s = static_cast<int64_t>(seconds);
  return s >= 3600 ? fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
                   : fmt::format("{}:{:02}", s / 60, s % 60);
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

// What one gang attempt trains with. Members are declared in the order they must
// be built; they are destroyed in reverse (the weights let go of the model first).
struct Replica {
  std::unique_ptr<comm::Collective> comm;
  std::optional<model::Llama> model;
  std::unique_ptr<ShardedWeights> weights;
  std::vector<torch::Tensor> params;
  std::unique_ptr<torch::optim::AdamW> optimizer;
};

void build_replica(Replica& r, const Config& config, const std::filesystem::path& base, CoordinatorLink& link,
                   const Gang& gang, const WorkerOptions& options) {
  comm::CollectiveOptions co;
  co.rank = static_cast<int>(gang.rank);
  co.size = static_cast<int>(gang.world_size);
  co.attempt = gang.attempt;
  co.timeout = std::chrono::milliseconds(static_cast<int64_t>(config.distributed.collective_timeout_s * 1000));
  co.hostname = options.gloo_hostname;
  co.device = options.local_rank;
  if (const char* iface = std::getenv("GLOO_SOCKET_IFNAME")) co.iface = iface;
  const torch::Device device = training_device(config, options.local_rank);
  r.comm = comm::connect(co.size > 1 ? collective_backend(config, device) : "local", link.store(), co);
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

}  // namespace

TrainResult run_worker(const Config& config, CoordinatorLink& link, const TrainHooks& hooks,
                       const WorkerOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
  const auto base = resolve_hub_path(config.base_model, HubRepoType::Model, "base_model");
  link.join(options.host, training_device(config, options.local_rank).str());

  TrainResult result;
  uint64_t after = 0;  // the attempt this worker last trained in
  for (;;) {
    const Gang gang = link.wait_for_gang(after);
    link.close_stream();  // the previous attempt's, now that a new gang formed
    after = gang.attempt;
    const bool lead = gang.rank == 0;
    auto print = [&](const std::string& line) {
      if (hooks.print && lead) hooks.print(line);
    };
    const uint64_t total = gang.total_steps;
    Replica r;
    try {
      build_replica(r, config, base, link, gang, options);
    } catch (const comm::CommError& e) {
      if (hooks.print) hooks.print(fmt::format("attempt {}: {}; waiting for the next gang", gang.attempt, e.what()));
      link.report_failure(e.what());
      continue;
    }
    if (options.on_gang) options.on_gang(gang, r.weights->shard_bytes(), r.weights->model_bytes());
    int64_t trainable = 0;
    for (auto& p : r.params) trainable += p.numel();
    print(fmt::format("training {}: {} steps ({} per epoch), {} trainable parameters, {} base weights{}",
                      config.model_name, total, gang.steps_per_epoch, trainable,
                      config.quantization.enabled ? "NF4" : "dense",
                      gang.world_size > 1 ? fmt::format(", {} ranks ({}, {}, attempt {})", gang.world_size,
                                                        r.comm->backend(), config.distributed.sharding, gang.attempt)
                                          : std::string()));
    result.steps.clear();
    if (gang.resume_step > 0) {
      result.steps = load_checkpoint(gang.resume_checkpoint, *r.model, *r.optimizer);
      result.resumed_from = gang.resume_step;
      print(fmt::format("resuming from {} (step {})", gang.resume_checkpoint, gang.resume_step));
    }
    const CheckpointMeta meta{config.base_model, config.lora.task_type, config.lora.bias, gang.steps_per_epoch, total};
    uint64_t last_checkpoint = gang.resume_step;
    auto checkpoint = [&](uint64_t step) {
      last_checkpoint = step;
      auto dir = checkpoint_dir(config.trainer_output_dir, step);
      if (lead) {
        dir = write_checkpoint(config.trainer_output_dir, step, *r.model, *r.optimizer, result.steps, meta,
                               config.checkpoint.keep_last);
      }
      r.comm->barrier();  // rank 0's files are complete (a shared file system)
      link.commit_checkpoint(step, dir.string(), fmt::format("{:064x}", hash_file(dir / "checkpoint.json")));
    };

    try {
      const auto held_out = link.eval_batches();
      link.open_stream(gang.resume_step + 1);
      double window_loss = 0;
      int64_t window_steps = 0;
      for (uint64_t step = gang.resume_step + 1; step <= total; ++step) {
        if (hooks.stop && *hooks.stop && gang.world_size == 1) {
          if (step - 1 > last_checkpoint) checkpoint(step - 1);
          print(last_checkpoint == 0 ? std::string("interrupted before the first step: nothing to resume from")
                                     : fmt::format("interrupted after step {}: `herd train CONFIG --resume` continues "
                                                   "from checkpoint-{}",
                                                   step - 1, last_checkpoint));
          result.interrupted = true;
          result.seconds = seconds();
          link.close_stream();
          return result;
        }
        const auto step_start = std::chrono::steady_clock::now();
        auto batches = link.next_step(step);
        const double lr = config.trainer.learning_rate *
                          lr_factor(config.trainer.lr_scheduler, static_cast<int64_t>(step) - 1,
                                    config.trainer.warmup_steps, static_cast<int64_t>(total));
        for (auto& group : r.optimizer->param_groups()) {
          static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
        }
        r.optimizer->zero_grad();
        const double normaliser = static_cast<double>(std::max<uint64_t>(1, batches.front().step_loss_tokens()));
        torch::Tensor loss_sum;  // on the device: read once a step, not once a micro-batch
        uint64_t tokens = 0;
        for (size_t m = 0; m < batches.size(); ++m) {
          if (batches[m].sample_ids_size() == 0 && gang.world_size == 1) continue;
          r.weights->set_sync_gradients(m + 1 == batches.size());
          auto loss = micro_batch_loss(*r.model, batches[m], &tokens);
          (loss / normaliser).backward();
          const auto value = loss.detach().to(torch::kFloat64);
          loss_sum = loss_sum.defined() ? loss_sum + value : value;
        }
        r.weights->finish_gradients();
        if (!r.model->activation_checkpointing()) r.weights->release_all();
        // The step's loss and tokens over every rank.
        auto totals = torch::tensor({loss_sum.defined() ? loss_sum.item<double>() : 0.0, static_cast<double>(tokens)},
                                    torch::kFloat64);
        r.comm->all_reduce(totals).wait();
        const double grad_norm =
            clip_grad_norm(r.params, config.trainer.max_grad_norm > 0 ? config.trainer.max_grad_norm
                                                                      : std::numeric_limits<double>::infinity());
        r.optimizer->step();

        const auto all_tokens = static_cast<uint64_t>(totals[1].item<double>());
        StepLog log{step, static_cast<double>(step) / static_cast<double>(gang.steps_per_epoch),
                    totals[0].item<double>() / normaliser, lr, grad_norm, all_tokens};
        link.report_step(step, log.loss, tokens,
                         std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count());
        result.steps.push_back(log);
        result.tokens += all_tokens;
        if (hooks.on_step && lead) hooks.on_step(log, total);
        window_loss += log.loss;
        ++window_steps;
        if (static_cast<int64_t>(step) % config.trainer.logging_steps == 0 || step == total) {
          const double elapsed = seconds();
          print(fmt::format("step {}/{}  epoch {:.2f}  loss {:.4f}  lr {:.3g}  grad_norm {:.4f}  tokens/s {:.0f}  "
                            "elapsed {}  eta {}",
                            step, total, log.epoch, window_loss / static_cast<double>(window_steps), lr, grad_norm,
                            static_cast<double>(result.tokens) / elapsed, clock_time(elapsed),
                            clock_time(elapsed / static_cast<double>(step - gang.resume_step) *
                                       static_cast<double>(total - step))));
          window_loss = 0;
          window_steps = 0;
        }
        const bool eval_due = config.trainer.eval_steps > 0
                                  ? step % static_cast<uint64_t>(config.trainer.eval_steps) == 0
                                  : step == total;
        // Every rank gets as many eval micro-batches: none on one means none on all.
        if (!held_out.empty() && (eval_due || step == total)) {
          const auto [loss, samples] = eval_loss(*r.model, *r.comm, held_out);
          result.evals.emplace_back(step, loss);
          print(fmt::format("eval  step {}/{}  eval_loss {:.4f}  ({} held-out samples)", step, total, loss, samples));
        }
        if (step == total || step % static_cast<uint64_t>(config.checkpoint.every_steps) == 0) checkpoint(step);
      }
    } catch (const AttemptOver& e) {
      if (hooks.print) hooks.print(fmt::format("attempt {} is over ({}); waiting for the next gang", gang.attempt, e.what()));
      continue;
    } catch (const comm::CommError& e) {
      // Every member may still look alive to the coordinator: say the attempt failed.
      if (hooks.print) hooks.print(fmt::format("attempt {}: {}; waiting for the next gang", gang.attempt, e.what()));
      link.report_failure(e.what());
      continue;
    }
    link.close_stream();
    result.adapter_dir = config.adapter_dir();
    if (lead) {
      model::save_adapter(*r.model, result.adapter_dir, config.base_model, config.lora.task_type, config.lora.bias);
    }
    result.seconds = seconds();
    result.peak_memory_bytes = peak_rss_bytes();
    print(fmt::format("done: {} steps in {}, {} tokens, {:.0f} tokens/s, peak memory {:.0f} MiB", result.steps.size(),
                      clock_time(result.seconds), result.tokens, static_cast<double>(result.tokens) / result.seconds,
                      static_cast<double>(result.peak_memory_bytes) / (1 << 20)));
    print("adapter: " + result.adapter_dir.string());
    return result;
  }
}

TrainResult train(const Config& config, const TrainHooks& hooks, bool resume) {
  if (config.distributed.world_size != 1) {
    throw std::runtime_error(fmt::format("herd train runs one local worker; distributed.world_size is {} "
                                         "(use --workers N, or start herd-coordinator and herd worker processes)",
                                         config.distributed.world_size));
  }
  resolve_hub_path(config.base_model, HubRepoType::Model, "base_model");  // before the data: a clear first error
  // The in-process coordinator: the plan and stream a remote one would serve.
  auto job = coordinator::load_job(config, {});
  if (resume || config.checkpoint.resume == "auto") {
    std::vector<std::string> warnings;
    auto from = newest_checkpoint(config.trainer_output_dir, &warnings);
    for (const auto& w : warnings) {
      if (hooks.warn) hooks.warn(w);
    }
    if (from) job->resume_from(from->step, from->dir.string());
  }
  auto link = local_link(*job, config.model_name);
  return run_worker(config, *link, hooks);
}

}  // namespace herd::train
