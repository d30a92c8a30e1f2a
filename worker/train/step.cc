#include "worker/train/step.h"

#include <malloc.h>

#include <algorithm>
#include <limits>

#include "common/config.h"
#include "worker/train/fused_adamw.h"
#include "worker/train/lr_schedule.h"

namespace herd::train {

namespace v1 = herd::v1;

namespace {

torch::ScalarType compute_dtype(const std::string& name) {
  if (name == "bfloat16") return torch::kBFloat16;
  if (name == "float16") return torch::kFloat16;
  return torch::kFloat32;
}

// Next-token cross-entropy of one micro-batch, summed over the positions its mask
// counts; `tokens` gains the rows' real tokens, `predicted` the positions counted.
// A micro-batch without rows (this rank ran out in an epoch's short last step)
// becomes one row whose loss counts nothing, so the rank still takes part in every
// collective of the forward and backward.
//
// A packed micro-batch (row_samples set) gives each token its sample's segment id
// (1, 2, ... within its row; 0 for padding): attention stays inside a sample and its
// positions restart, so each sample's losses are the ones it gets alone.
torch::Tensor micro_batch_loss(const model::Llama& model, const v1::MicroBatch& batch, uint64_t* tokens,
                               uint64_t* predicted = nullptr) {
  const bool packed = batch.row_samples_size() > 0;
  const int64_t rows = packed ? batch.row_samples_size() : batch.sample_ids_size();
  if (rows == 0) {
    auto ids = torch::zeros({1, 2}, torch::TensorOptions().dtype(torch::kInt64).device(model.device()));
    auto logits = model.forward(ids);
    return logits.sum() * 0.0;
  }
  const int64_t width = batch.token_ids_size() / rows;
  const auto device = model.device();
  model.check_token_ids({batch.token_ids().data(), static_cast<size_t>(batch.token_ids_size())});
  auto ids = torch::from_blob(const_cast<int32_t*>(batch.token_ids().data()), {rows, width}, torch::kInt32)
                 .to(device, torch::kInt64);
  auto mask = torch::from_blob(const_cast<char*>(batch.loss_mask().data()), {rows, width}, torch::kUInt8)
                  .to(device, torch::kFloat32)
                  .slice(1, 1)
                  .reshape({-1});
  for (uint32_t length : batch.lengths()) *tokens += length;
  if (predicted) *predicted += static_cast<uint64_t>(mask.sum().item<double>());
  torch::Tensor segments;
  if (packed) {
    segments = torch::zeros({rows, width}, torch::kInt32);
    int32_t* seg = segments.data_ptr<int32_t>();
    int sample = 0;
    for (int64_t r = 0; r < rows; ++r) {
      int64_t at = r * width;
      for (uint32_t k = 1; k <= batch.row_samples(static_cast<int>(r)); ++k, ++sample) {
        TORCH_CHECK(sample < batch.lengths_size() && at + batch.lengths(sample) <= (r + 1) * width,
                    "a packed micro-batch whose row_samples and lengths do not fit its rows");
        const int64_t length = batch.lengths(sample);
        std::fill(seg + at, seg + at + length, static_cast<int32_t>(k));
        at += length;
      }
    }
  }
  // Unpacked rows are right-padded: under the causal mask no real token sees the
  // padding, so the plain causal attention gives every counted position the logits
  // that an attention mask would (and runs the fused kernels).
  return (model.next_token_loss(ids, {}, segments).reshape({-1}) * mask).sum();
}

}  // namespace

model::LoadOptions load_options(const Config& config, torch::Device device) {
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
  lora.use_dora = config.lora.use_dora;
  lora.target_modules = config.lora.target_modules;
  lora.seed = static_cast<uint64_t>(config.trainer.seed);
  load.lora = lora;
  return load;
}

void build_replica(Replica& r, const Config& config, std::unique_ptr<comm::Collective> comm,
                   model::LoadOptions options, const std::function<model::Llama(const model::LoadOptions&)>& load) {
  r.comm = std::move(comm);
  r.weights = std::make_unique<ShardedWeights>(*r.comm, parse_sharding(config.distributed.sharding));
  torch::manual_seed(static_cast<uint64_t>(config.trainer.seed));  // LoRA dropout
  options.on_layer = [w = r.weights.get()](int64_t i, model::DecoderLayer& layer) { w->adopt_layer(i, layer); };
  r.model.emplace(load(options));
  r.weights->attach(*r.model);
  ::malloc_trim(0);  // hand the freed parts of every layer back to the system
  r.model->set_training(true);
  r.model->set_activation_checkpointing(config.trainer.gradient_checkpointing);
  r.model->set_loss_chunk(config.trainer.loss_chunk_tokens);
  r.model->set_activation_offload(config.trainer.offload_activations);
  r.flops = {r.model->config(), config.lora.r, config.lora.target_modules, config.trainer.gradient_checkpointing};
  r.params = r.model->trainable_parameters();
  for (auto& p : r.params) p.set_requires_grad(true);
  auto adamw = torch::optim::AdamWOptions(config.trainer.learning_rate)
                   .betas({config.trainer.adam_beta1, config.trainer.adam_beta2})
                   .eps(config.trainer.adam_epsilon)
                   .weight_decay(config.trainer.weight_decay);
  const double ratio = config.lora.loraplus_lr_ratio;
  if (ratio <= 0) {
    r.optimizer = std::make_unique<FusedAdamW>(r.params, adamw);
    r.lr_ratios = {1.0};
    return;
  }
  std::vector<torch::Tensor> a, b;
  for (auto& [name, t] : r.model->lora_tensors()) {
    (name.ends_with(".lora_A.weight") ? a : b).push_back(t);
  }
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(a, std::make_unique<torch::optim::AdamWOptions>(adamw));
  groups.emplace_back(b, std::make_unique<torch::optim::AdamWOptions>(adamw));
  r.optimizer = std::make_unique<FusedAdamW>(std::move(groups), adamw);
  r.lr_ratios = {1.0, ratio};
}

double learning_rate(const Config& config, uint64_t step, uint64_t total) {
  return config.trainer.learning_rate * lr_factor(config.trainer.lr_scheduler, static_cast<int64_t>(step) - 1,
                                                  config.trainer.warmup_steps, static_cast<int64_t>(total));
}

StepOutcome train_step(Replica& r, const Config& config, const std::vector<v1::MicroBatch>& batches, double lr,
                       bool stop_requested) {
  auto& groups = r.optimizer->param_groups();
  for (size_t g = 0; g < groups.size(); ++g) {
    static_cast<torch::optim::AdamWOptions&>(groups[g].options()).lr(lr * r.lr_ratios.at(g));
  }
  r.optimizer->zero_grad();
  const double normaliser = static_cast<double>(std::max<uint64_t>(1, batches.front().step_loss_tokens()));
  const bool alone = r.comm->size() == 1;
  torch::Tensor loss_sum;  // on the device: read once a step, not once a micro-batch
  StepOutcome out;
  for (size_t m = 0; m < batches.size(); ++m) {
    if (batches[m].sample_ids_size() == 0 && alone) continue;
    r.weights->set_sync_gradients(m + 1 == batches.size());
    for (uint32_t length : batches[m].lengths()) out.rank_flops += r.flops.row(length);
    out.rank_samples += static_cast<uint64_t>(batches[m].sample_ids_size());
    auto loss = micro_batch_loss(*r.model, batches[m], &out.rank_tokens);
    (loss / normaliser).backward();
    const auto value = loss.detach().to(torch::kFloat64);
    loss_sum = loss_sum.defined() ? loss_sum + value : value;
  }
  r.weights->finish_gradients();
  if (!r.model->activation_checkpointing()) r.weights->release_all();
  auto totals = torch::tensor({loss_sum.defined() ? loss_sum.item<double>() : 0.0,
                               static_cast<double>(out.rank_tokens), stop_requested ? 1.0 : 0.0,
                               out.rank_flops.model, out.rank_flops.hardware},
                              torch::kFloat64);
  r.comm->all_reduce(totals).wait();
  out.grad_norm = clip_grad_norm(r.params, config.trainer.max_grad_norm > 0 ? config.trainer.max_grad_norm
                                                                           : std::numeric_limits<double>::infinity());
  r.optimizer->step();
  out.loss = totals[0].item<double>() / normaliser;
  out.tokens = static_cast<uint64_t>(totals[1].item<double>());
  out.stop = totals[2].item<double>() > 0;
  out.flops = {totals[3].item<double>(), totals[4].item<double>()};
  return out;
}

EvalResult eval_loss(model::Llama& model, comm::Collective& comm, const std::vector<v1::MicroBatch>& batches) {
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
          static_cast<uint64_t>(totals[2].item<double>()), static_cast<uint64_t>(all_predicted)};
}

std::vector<std::pair<std::string, torch::Tensor>> adapter_gradients(model::Llama& model, const torch::Tensor& ids) {
  model.set_training(true);
  model.set_activation_checkpointing(true);
  for (auto& p : model.trainable_parameters()) p.set_requires_grad(true);
  const auto rows = ids.to(model.device());
  const auto scores = model.forward(rows);
  auto loss = torch::nn::functional::cross_entropy(scores.slice(1, 0, -1).reshape({-1, scores.size(2)}),
                                                   rows.slice(1, 1).reshape({-1}));
  loss.backward();
  std::vector<std::pair<std::string, torch::Tensor>> tensors = {{"loss", loss.detach().reshape({1})}};
  for (auto& [name, t] : model.lora_tensors()) {
    tensors.emplace_back(name, t.detach());
    tensors.emplace_back(name + ".grad", t.grad());
  }
  for (size_t i = 0; i < model.layers().size(); ++i) {
    for (const auto& m : model::linear_modules()) {
      const auto& w = model.layers()[i].linear.at(m)->weight();
      tensors.emplace_back(model::module_path(static_cast<int64_t>(i), m) + ".weight", w.materialize(torch::kFloat32));
    }
  }
  for (auto& [name, t] : tensors) t = t.to(torch::kCPU, torch::kFloat32).contiguous();
  return tensors;
}

}  // namespace herd::train
