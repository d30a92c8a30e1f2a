#include "worker/train/trainer.h"

#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>
#include <torch/torch.h>

#include "common/config.h"
#include "common/hf_cache.h"
#include "common/token_cache.h"
#include "coordinator/job.h"
#include "worker/model/llama.h"
#include "worker/model/peft_adapter.h"
#include "worker/train/checkpoint.h"
#include "worker/train/lr_schedule.h"

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

void check(const grpc::Status& s, const char* what) {
  if (!s.ok()) throw std::runtime_error(fmt::format("{}: {}", what, s.error_message()));
}

// Next-token cross-entropy of one micro-batch, summed over the positions its mask
// counts; `tokens` gains the rows' real tokens, `predicted` the positions counted.
torch::Tensor micro_batch_loss(const model::Llama& model, const v1::MicroBatch& batch, uint64_t* tokens,
                               uint64_t* predicted = nullptr) {
  const int64_t rows = batch.sample_ids_size();
  const int64_t width = batch.token_ids_size() / rows;
  auto ids = torch::from_blob(const_cast<int32_t*>(batch.token_ids().data()), {rows, width}, torch::kInt32)
                 .to(torch::kInt64);
  auto mask = torch::from_blob(const_cast<char*>(batch.loss_mask().data()), {rows, width}, torch::kUInt8)
                  .to(torch::kFloat32)
                  .slice(1, 1)
                  .reshape({-1});
  auto attention = torch::zeros({rows, width}, torch::kInt64);
  for (int64_t r = 0; r < rows; ++r) {
    attention[r].slice(0, 0, batch.lengths(static_cast<int>(r))).fill_(1);
    *tokens += batch.lengths(static_cast<int>(r));
  }
  if (predicted) *predicted += static_cast<uint64_t>(mask.sum().item<double>());
  auto logits = model.forward(ids, attention);
  auto per_token = torch::nn::functional::cross_entropy(
      logits.slice(1, 0, width - 1).reshape({-1, logits.size(2)}), ids.slice(1, 1).reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  return (per_token * mask).sum();
}

// Mean next-token loss over the held-out samples (masked tokens only), without
// dropout or gradients, batch_size rows at a time.
double eval_loss(model::Llama& model, const coordinator::Job& job, size_t batch_size) {
  torch::NoGradGuard no_grad;
  model.set_training(false);
  const auto& ids = job.eval_samples();
  double sum = 0;
  uint64_t tokens = 0, predicted = 0;
  for (size_t first = 0; first < ids.size(); first += batch_size) {
    const std::vector<size_t> rows(ids.begin() + static_cast<std::ptrdiff_t>(first),
                                   ids.begin() + static_cast<std::ptrdiff_t>(std::min(ids.size(), first + batch_size)));
    sum += micro_batch_loss(model, job.micro_batch(rows), &tokens, &predicted).item<double>();
  }
  model.set_training(true);
  return predicted > 0 ? sum / static_cast<double>(predicted) : 0.0;
}

}  // namespace

TrainResult train(const Config& config, const TrainHooks& hooks, bool resume) {
  auto print = [&](const std::string& line) {
    if (hooks.print) hooks.print(line);
  };
  if (config.distributed.world_size != 1) {
    throw std::runtime_error(fmt::format("herd train runs one local worker; distributed.world_size is {} "
                                         "(start herd-coordinator and herd worker processes instead)",
                                         config.distributed.world_size));
  }
  const auto start = std::chrono::steady_clock::now();
  auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };

  const auto base = resolve_hub_path(config.base_model, HubRepoType::Model, "base_model");
  // The in-process coordinator: the plan and stream a remote one would serve.
  auto job = coordinator::load_job(config, {});
  std::optional<FoundCheckpoint> from;
  if (resume || config.checkpoint.resume == "auto") {
    std::vector<std::string> warnings;
    from = newest_checkpoint(config.trainer_output_dir, &warnings);
    for (const auto& w : warnings) {
      if (hooks.warn) hooks.warn(w);
    }
    if (from) job->resume_from(from->step, from->dir.string());
  }
  v1::RegisterRequest reg;
  reg.set_job_id(config.model_name);
  reg.set_host("local");
  v1::RegisterResponse me;
  check(job->Register(reg, &me), "register");
  v1::WaitForGangRequest wait;
  wait.set_worker_id(me.worker_id());
  v1::WaitForGangResponse gang;
  check(job->WaitForGang(wait, &gang, [] { return false; }), "gang");
  const uint64_t total = gang.total_steps();

  torch::manual_seed(static_cast<uint64_t>(config.trainer.seed));  // LoRA dropout
  model::LoadOptions load;
  load.quantize = config.quantization.enabled;
  load.double_quant = config.quantization.double_quant;
  load.compute_dtype = compute_dtype(config.quantization.compute_dtype);
  model::LoraOptions lora;
  lora.r = config.lora.r;
  lora.lora_alpha = config.lora.lora_alpha;
  lora.dropout = config.lora.lora_dropout;
  lora.use_rslora = config.lora.use_rslora;
  lora.target_modules = config.lora.target_modules;
  lora.seed = static_cast<uint64_t>(config.trainer.seed);
  load.lora = lora;
  auto model = model::Llama::load(base, load);
  model.set_training(true);
  model.set_activation_checkpointing(config.trainer.gradient_checkpointing);
  auto params = model.trainable_parameters();
  for (auto& p : params) p.set_requires_grad(true);
  torch::optim::AdamW optimizer(params, torch::optim::AdamWOptions(config.trainer.learning_rate)
                                            .betas({config.trainer.adam_beta1, config.trainer.adam_beta2})
                                            .eps(config.trainer.adam_epsilon)
                                            .weight_decay(config.trainer.weight_decay));
  int64_t trainable = 0;
  for (auto& p : params) trainable += p.numel();
  print(fmt::format("training {}: {} steps ({} per epoch), {} trainable parameters, {} base weights", config.model_name,
                    total, job->steps_per_epoch(), trainable, config.quantization.enabled ? "NF4" : "dense"));

  TrainResult result;
  if (from) {
    result.steps = load_checkpoint(from->dir, model, optimizer);
    result.resumed_from = from->step;
    print(fmt::format("resuming from {} (step {})", from->dir.string(), from->step));
  }
  const CheckpointMeta meta{config.base_model, config.lora.task_type, config.lora.bias, job->steps_per_epoch(), total};
  uint64_t last_checkpoint = gang.resume_step();
  auto checkpoint = [&](uint64_t step) {
    last_checkpoint = step;
    const auto dir = write_checkpoint(config.trainer_output_dir, step, model, optimizer, result.steps, meta,
                                      config.checkpoint.keep_last);
    v1::CommitCheckpointRequest commit;
    commit.set_worker_id(me.worker_id());
    commit.set_attempt(gang.attempt());
    commit.set_step(step);
    commit.set_path(dir.string());
    commit.set_digest(fmt::format("{:064x}", hash_file(dir / "checkpoint.json")));
    v1::CommitCheckpointResponse committed;
    check(job->CommitCheckpoint(commit, &committed), "checkpoint");
    return dir;
  };

  v1::StreamBatchesRequest stream;
  stream.set_worker_id(me.worker_id());
  stream.set_attempt(gang.attempt());
  stream.set_from_step(gang.resume_step() + 1);
  check(job->OpenStream(stream), "stream");

  double window_loss = 0;
  int64_t window_steps = 0;
  for (uint64_t step = gang.resume_step() + 1; step <= total; ++step) {
    if (hooks.stop && *hooks.stop) {
      if (step - 1 > last_checkpoint) checkpoint(step - 1);
      print(last_checkpoint == 0 ? std::string("interrupted before the first step: nothing to resume from")
                                 : fmt::format("interrupted after step {}: `herd train CONFIG --resume` continues "
                                               "from checkpoint-{}",
                                               step - 1, last_checkpoint));
      result.interrupted = true;
      result.seconds = seconds();
      return result;
    }
    auto next = job->NextStep(stream, step);
    if (next.end) check(*next.end, "stream");
    if (next.batches.empty()) throw std::runtime_error(fmt::format("step {}: no batches", step));
    const double lr = config.trainer.learning_rate *
                      lr_factor(config.trainer.lr_scheduler, static_cast<int64_t>(step) - 1,
                                config.trainer.warmup_steps, static_cast<int64_t>(total));
    for (auto& group : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    optimizer.zero_grad();
    const double normaliser = static_cast<double>(std::max<uint64_t>(1, next.batches.front().step_loss_tokens()));
    double loss_sum = 0;
    uint64_t tokens = 0;
    for (const auto& batch : next.batches) {
      if (batch.sample_ids_size() == 0) continue;  // this rank ran out in the epoch's last step
      auto loss = micro_batch_loss(model, batch, &tokens);
      (loss / normaliser).backward();
      loss_sum += loss.item<double>();
    }
    const double grad_norm =
        config.trainer.max_grad_norm > 0
            ? torch::nn::utils::clip_grad_norm_(params, config.trainer.max_grad_norm)
            : torch::nn::utils::clip_grad_norm_(params, std::numeric_limits<double>::infinity());
    optimizer.step();

    StepLog log{step, static_cast<double>(step) / static_cast<double>(job->steps_per_epoch()),
                loss_sum / normaliser, lr, grad_norm, tokens};
    v1::ReportStepRequest report;
    report.set_worker_id(me.worker_id());
    report.set_attempt(gang.attempt());
    report.set_step(step);
    report.set_loss(log.loss);
    report.set_tokens(tokens);
    v1::ReportStepResponse reported;
    check(job->ReportStep(report, &reported), "report");
    result.steps.push_back(log);
    result.tokens += tokens;
    if (hooks.on_step) hooks.on_step(log, total);
    window_loss += log.loss;
    ++window_steps;
    if (static_cast<int64_t>(step) % config.trainer.logging_steps == 0 || step == total) {
      const double elapsed = seconds();
      print(fmt::format("step {}/{}  epoch {:.2f}  loss {:.4f}  lr {:.3g}  grad_norm {:.4f}  tokens/s {:.0f}  "
                        "elapsed {}  eta {}",
                        step, total, log.epoch, window_loss / static_cast<double>(window_steps), lr, grad_norm,
                        static_cast<double>(result.tokens) / elapsed, clock_time(elapsed),
                        clock_time(elapsed / static_cast<double>(step) * static_cast<double>(total - step))));
      window_loss = 0;
      window_steps = 0;
    }
    const bool eval_due = config.trainer.eval_steps > 0 ? step % static_cast<uint64_t>(config.trainer.eval_steps) == 0
                                                        : step == total;
    if (!job->eval_samples().empty() && (eval_due || step == total)) {
      const double loss = eval_loss(model, *job, static_cast<size_t>(config.trainer.batch_size));
      result.evals.emplace_back(step, loss);
      print(fmt::format("eval  step {}/{}  eval_loss {:.4f}  ({} held-out samples)", step, total, loss,
                        job->eval_samples().size()));
    }
    if (step == total || step % static_cast<uint64_t>(config.checkpoint.every_steps) == 0) checkpoint(step);
  }

  result.adapter_dir = config.adapter_dir();
  model::save_adapter(model, result.adapter_dir, config.base_model, config.lora.task_type, config.lora.bias);
  result.seconds = seconds();
  result.peak_memory_bytes = peak_rss_bytes();
  print(fmt::format("done: {} steps in {}, {} tokens, {:.0f} tokens/s, peak memory {:.0f} MiB", result.steps.size(),
                    clock_time(result.seconds), result.tokens, static_cast<double>(result.tokens) / result.seconds,
                    static_cast<double>(result.peak_memory_bytes) / (1 << 20)));
  print("adapter: " + result.adapter_dir.string());
  return result;
}

}  // namespace herd::train
