// FSDP-style sharding of the frozen base model over a gang's ranks.
//
// full_shard: each decoder layer's frozen tensors (packed NF4 codes, absmax data,
// norms; dense weights when quantization is off) are copied into one flat byte
// buffer as the layer loads, and a rank keeps 1/N of it. Before a layer computes,
// its buffer is all-gathered (the packed 4-bit bytes: a quarter of bf16's traffic)
// and the layer's tensors become views into it; after, they are dropped. The next
// layer's gather is issued before the current one computes (forward: i+1;
// backward's recomputation: i-1). The embedding is one more flat buffer, gathered
// for the lookup at the start of a forward; the final norm and lm_head another,
// prefetched with the last layer and released once the logits are made (a tied
// lm_head gathers the embedding again). The two are never resident at once.
// no_shard: every rank holds the whole model (plain data parallel).
// Either way LoRA parameters are replicated: on a step's last micro-batch each
// layer's LoRA gradients are summed over the ranks in one bucket, launched as soon
// as that layer's backward is done.
// One rank is the same code with a local group: gathers are views of the one copy.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/torch.h>

#include "worker/comm/collective.h"
#include "worker/model/llama.h"

namespace herd::train {

enum class Sharding { kFullShard, kNoShard };
Sharding parse_sharding(const std::string& name);  // full_shard | no_shard

class ShardedWeights : public model::WeightSource {
 public:
  ShardedWeights(comm::Collective& comm, Sharding mode);
  ~ShardedWeights() override;

  // For LoadOptions::on_layer: takes layer i's frozen tensors (this rank keeps its part).
  void adopt_layer(int64_t index, model::DecoderLayer& layer);
  // After loading: the embedding, final norm and lm_head; becomes the model's source
  // (until this object goes).
  void attach(model::Llama& model);

  // Sum each layer's LoRA gradients over the ranks as its backward ends (set it for
  // a step's last micro-batch); finish_gradients waits for every bucket (and sums
  // those of layers whose backward did not report, without recomputation).
  void set_sync_gradients(bool on) { sync_ = on; }
  void finish_gradients();
  // Drops every gathered layer (after a step without recomputation).
  void release_all();

  int64_t shard_bytes() const;  // frozen bytes this rank holds between uses
  int64_t model_bytes() const;  // frozen bytes of the whole model

  void acquire(int64_t layer, bool backward) override;
  void release(int64_t layer) override;
  void backward_done(int64_t layer) override;
  void acquire_embedding() override;
  void release_embedding() override;
  void acquire_lm_head() override;
  void release_lm_head() override;

 private:
  struct Slot {
    torch::Tensor* tensor;
    torch::ScalarType dtype;
    std::vector<int64_t> shape;
    int64_t offset, bytes;
  };
  struct Flat {
    std::vector<Slot> slots;
    int64_t bytes = 0;  // the model's bytes in it (before padding)
    torch::Tensor shard, full;
    comm::Work pending;
    bool in_flight = false, resident = false;
  };
  Flat make_flat(const std::vector<torch::Tensor*>& tensors);
  void gather(Flat& f);
  void ensure(Flat& f);
  void drop(Flat& f);
  void prefetch(int64_t layer);
  void sync_layer(size_t layer);

  comm::Collective& comm_;
  const Sharding mode_;
  model::Llama* model_ = nullptr;
  std::vector<Flat> layers_;
  Flat embedding_, lm_head_;  // lm_head_: the final norm and, untied, lm_head
  bool tied_ = false;
  std::vector<std::vector<torch::Tensor>> lora_;  // per layer
  bool sync_ = false;
  struct Bucket {
    size_t layer;
    torch::Tensor data;
    comm::Work work;
  };
  std::vector<Bucket> buckets_;
  std::vector<bool> synced_;
  int64_t model_bytes_ = 0;
};

}  // namespace herd::train
