#include "worker/train/sharding.h"

#include <stdexcept>

#include <fmt/format.h>

namespace herd::train {

namespace {
constexpr int64_t kAlign = 64;
int64_t align(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

std::vector<torch::Tensor*> frozen_tensors(model::DecoderLayer& layer) {
  std::vector<torch::Tensor*> out = {&layer.input_layernorm, &layer.post_attention_layernorm};
  for (const auto& module : model::linear_modules()) {
    auto& w = layer.linear.at(module)->mutable_weight();
    for (auto* t : {&w.packed, &w.absmax, &w.absmax_codes, &w.nested_absmax, &w.dense}) out.push_back(t);
  }
  for (auto& [module, bias] : layer.bias) out.push_back(&bias);  // Qwen2's q/k/v biases
  return out;
}
}  // namespace

Sharding parse_sharding(const std::string& name) {
  if (name == "full_shard") return Sharding::kFullShard;
  if (name == "no_shard") return Sharding::kNoShard;
  throw std::invalid_argument("distributed.sharding '" + name + "': full_shard or no_shard");
}

ShardedWeights::ShardedWeights(comm::Collective& comm, Sharding mode) : comm_(comm), mode_(mode) {}

ShardedWeights::~ShardedWeights() {
  if (model_) model_->set_weight_source(nullptr);
}

ShardedWeights::Flat ShardedWeights::make_flat(const std::vector<torch::Tensor*>& tensors) {
  Flat f;
  int64_t offset = 0;
  std::vector<torch::Tensor> contiguous;
  for (auto* t : tensors) {
    if (!t->defined()) continue;
    contiguous.push_back(t->contiguous());
    const auto bytes = static_cast<int64_t>(t->nbytes());
    f.slots.push_back(Slot{t, t->scalar_type(), t->sizes().vec(), offset, bytes});
    f.bytes += bytes;
    offset = align(offset + bytes);
  }
  model_bytes_ += f.bytes;
  if (mode_ == Sharding::kNoShard) {
    f.resident = true;  // the tensors stay where they are
    return f;
  }
  const int64_t n = comm_.size(), per_rank = align((offset + n - 1) / n);
  auto flat = torch::zeros({per_rank * n}, torch::TensorOptions().dtype(torch::kUInt8).device(
                                               contiguous.empty() ? torch::kCPU : contiguous.front().device()));
  for (size_t i = 0; i < f.slots.size(); ++i) {
    const auto& s = f.slots[i];
    flat.slice(0, s.offset, s.offset + s.bytes).copy_(contiguous[i].reshape({-1}).view(torch::kUInt8));
    *s.tensor = torch::Tensor();
  }
  contiguous.clear();
  const int64_t r = comm_.rank();
  f.shard = n == 1 ? flat : flat.slice(0, r * per_rank, (r + 1) * per_rank).clone();
  return f;
}

void ShardedWeights::adopt_layer(int64_t index, model::DecoderLayer& layer) {
  if (index != static_cast<int64_t>(layers_.size())) throw std::logic_error("layers are adopted in order");
  layers_.push_back(make_flat(frozen_tensors(layer)));
  std::vector<torch::Tensor> lora;
  for (const auto& module : model::linear_modules()) {
    for (auto& [name, t] : layer.linear.at(module)->adapter_tensors()) lora.push_back(*t);
  }
  lora_.push_back(std::move(lora));
}

void ShardedWeights::attach(model::Llama& model) {
  if (layers_.size() != model.layers().size()) {
    throw std::logic_error(fmt::format("{} of {} layers adopted", layers_.size(), model.layers().size()));
  }
  tied_ = model.lm_head().defined() && model.lm_head().is_same(model.embed_tokens());
  embedding_ = make_flat({&model.embed_tokens()});
  std::vector<torch::Tensor*> out = {&model.final_norm()};
  if (!tied_) out.push_back(&model.lm_head());
  lm_head_ = make_flat(out);
  if (tied_ && mode_ == Sharding::kFullShard) model.lm_head() = torch::Tensor();
  synced_.assign(layers_.size(), false);
  model_ = &model;
  model.set_weight_source(this);
}

int64_t ShardedWeights::shard_bytes() const {
  if (mode_ == Sharding::kNoShard) return model_bytes_;
  int64_t total = 0;
  for (const auto* f : {&embedding_, &lm_head_}) total += f->shard.defined() ? static_cast<int64_t>(f->shard.nbytes()) : 0;
  for (const auto& f : layers_) total += static_cast<int64_t>(f.shard.nbytes());
  return total;
}

int64_t ShardedWeights::model_bytes() const { return model_bytes_; }

void ShardedWeights::gather(Flat& f) {
  if (f.resident || f.in_flight || comm_.size() == 1) return;
  f.full = torch::empty({f.shard.numel() * comm_.size()}, f.shard.options());
  f.pending = comm_.all_gather(f.full, f.shard);
  f.in_flight = true;
}

void ShardedWeights::ensure(Flat& f) {
  if (f.resident) return;
  gather(f);
  if (f.in_flight) {
    f.pending.wait();
    f.pending = {};
    f.in_flight = false;
  }
  const auto& source = comm_.size() == 1 ? f.shard : f.full;
  for (const auto& s : f.slots) {
    *s.tensor = source.slice(0, s.offset, s.offset + s.bytes).view(s.dtype).view(s.shape);
  }
  f.resident = true;
}

void ShardedWeights::drop(Flat& f) {
  if (mode_ == Sharding::kNoShard || !f.resident) return;
  for (const auto& s : f.slots) *s.tensor = torch::Tensor();
  f.full = torch::Tensor();  // views the graph still holds keep it alive until backward
  f.resident = false;
}

void ShardedWeights::prefetch(int64_t layer) {
  if (layer >= 0 && layer < static_cast<int64_t>(layers_.size())) gather(layers_[static_cast<size_t>(layer)]);
  if (layer == static_cast<int64_t>(layers_.size())) {  // after the last layer: the final norm and lm_head
    gather(lm_head_);
    if (tied_) gather(embedding_);
  }
}

void ShardedWeights::acquire(int64_t layer, bool backward) {
  ensure(layers_.at(static_cast<size_t>(layer)));
  prefetch(backward ? layer - 1 : layer + 1);
}

void ShardedWeights::release(int64_t layer) { drop(layers_.at(static_cast<size_t>(layer))); }

void ShardedWeights::acquire_embedding() {
  gather(embedding_);
  prefetch(0);
  ensure(embedding_);
}

void ShardedWeights::release_embedding() { drop(embedding_); }

void ShardedWeights::acquire_lm_head() {
  ensure(lm_head_);
  if (!tied_) return;
  ensure(embedding_);
  model_->lm_head() = model_->embed_tokens();
}

void ShardedWeights::release_lm_head() {
  drop(lm_head_);
  if (!tied_) return;
  drop(embedding_);
  if (mode_ == Sharding::kFullShard) model_->lm_head() = torch::Tensor();
}

void ShardedWeights::release_all() {
  for (auto& f : layers_) drop(f);
}

void ShardedWeights::sync_layer(size_t layer) {
  synced_[layer] = true;
  if (comm_.size() == 1 || lora_[layer].empty()) return;
  std::vector<torch::Tensor> grads;
  for (auto& p : lora_[layer]) {
    grads.push_back(p.grad().defined() ? p.grad().reshape({-1}) : torch::zeros({p.numel()}, p.options()));
  }
  auto data = torch::cat(grads);
  auto work = comm_.all_reduce(data);
  buckets_.push_back(Bucket{layer, std::move(data), std::move(work)});
}

void ShardedWeights::backward_done(int64_t layer) {
  if (sync_) sync_layer(static_cast<size_t>(layer));
}

void ShardedWeights::finish_gradients() {
  for (size_t i = synced_.size(); i-- > 0;) {
    if (!synced_[i]) sync_layer(i);  // in backward's order, as every rank does
  }
  for (auto& b : buckets_) {
    b.work.wait();
    int64_t offset = 0;
    for (auto& p : lora_[b.layer]) {
      auto g = b.data.slice(0, offset, offset + p.numel()).view(p.sizes());
      if (p.grad().defined()) {
        p.mutable_grad().copy_(g);
      } else {
        p.mutable_grad() = g.clone();
      }
      offset += p.numel();
    }
  }
  buckets_.clear();
  synced_.assign(synced_.size(), false);
}

}  // namespace herd::train
