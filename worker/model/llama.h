// The Llama decoder (HF transformers' LlamaForCausalLM, same names and math):
// embeddings, RMSNorm, rotary embeddings (rotate_half convention, rope_theta,
// linear and llama3 rope_scaling), grouped-query attention with causal masking and
// right padding, SwiGLU MLP, lm_head (tied or not). The seven linear layers of each
// decoder layer are LoraLinear: NF4 or dense, with adapters on the target modules.
// The other families are this graph with their Family's flags (llama_config.h):
// Qwen2ForCausalLM's frozen q/k/v biases, MistralForCausalLM's sliding window.
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "worker/model/activation_offload.h"
#include "worker/model/llama_config.h"
#include "worker/model/lora_linear.h"

namespace herd {
class SafetensorsCheckpoint;
}

namespace herd::model {

inline const std::vector<std::string>& linear_modules() {
  static const std::vector<std::string> m = {"q_proj", "k_proj", "v_proj", "o_proj",
                                             "gate_proj", "up_proj", "down_proj"};
  return m;
}

struct LoraOptions {
  int64_t r = 8;
  double lora_alpha = 16;
  double dropout = 0.0;
  bool use_rslora = false;
  std::vector<std::string> target_modules = {"q_proj", "v_proj"};
  uint64_t seed = 42;     // initialization of A
  bool use_dora = false;  // peft's DoRA (LoraSpec::dora)

  double scaling() const;
};

struct DecoderLayer;

// Where the frozen weights live between uses. Without one every tensor is resident;
// worker/train/sharding.h keeps 1/N of each layer per rank and gathers a layer just
// before it computes (FSDP-style). Calls come in the same order on every rank.
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  // Make decoder layer i's frozen tensors resident (forward, or its recomputation
  // in backward: `backward` says which way the next layer is).
  virtual void acquire(int64_t layer, bool backward) = 0;
  // Layer i's frozen tensors may go.
  virtual void release(int64_t layer) = 0;
  // Layer i's backward is done: its LoRA gradients of this micro-batch are final.
  virtual void backward_done(int64_t layer) = 0;
  // The embedding: resident for the lookup at the start of a forward.
  virtual void acquire_embedding() = 0;
  virtual void release_embedding() = 0;
  // The final norm and lm_head: resident from the end of a forward until the
  // logits are made (with a chunked loss) or their backward is done (without).
  virtual void acquire_lm_head() = 0;
  virtual void release_lm_head() = 0;
};

struct LoadOptions {
  bool quantize = true;  // NF4 base weights (else dense in compute_dtype)
  bool double_quant = true;
  torch::ScalarType compute_dtype = torch::kFloat32;
  // The hidden stream between the linear layers (norms, rotary, attention, residual
  // adds). float32 as prepare_model_for_kbit_training leaves it; bfloat16 is
  // transformers' bf16 mixed precision (norms still normalize in float32).
  torch::ScalarType activation_dtype = torch::kFloat32;
  // Where every tensor lives: the CPU, or a GPU (cuda:LOCAL_RANK). Weights are read
  // and quantized on the CPU, one tensor at a time, then moved.
  torch::Device device = torch::kCPU;
  // On a GPU: fused kernels for RMSNorm, rotary, SwiGLU and the next-token loss
  // (worker/model/fused.h), grouped-query attention inside SDPA instead of copied K
  // and V heads, the adapters' GEMMs in the hidden stream's dtype, as under
  // autocast, and the layers that read one input as one autograd node
  // (worker/model/linear_group.h). Off: the eager ops, the reference the fused ones
  // are tested against. No effect on the CPU (but see fused_on_cpu).
  bool fused_kernels = true;
  // On the fused path: a gradient of a tensor that several ops read is built in one
  // buffer (linear_group.h; RMSNorm's backward kernel adds the residual's). Off:
  // autograd's pairwise sums, for comparison (herd_bench_train_step --autograd-sums).
  bool fused_gradient_sums = true;
  // For tests, which compare the fused path with the eager one on the CPU: the fused
  // path's parts written in torch ops (worker/model/linear_group.h) run on the CPU
  // too. The CUDA kernels still need a GPU.
  bool fused_on_cpu = false;
  // Whose dropout LoRA uses (LoraSpec::Dropout): by default herd's counter-based
  // one on a GPU, which the grouped layers need, and torch's on the CPU.
  LoraSpec::Dropout lora_dropout = LoraSpec::Dropout::kAuto;
  // With activation recompute: keep each layer's attention from the forward (its
  // output and what its backward saves: q, k, v and SDPA's log-sum-exp) until the
  // layer's backward, so that the recompute does not run attention again. Costs
  // that memory a layer; on an H100's ~1B step it was no faster (BENCHMARKS.md;
  // herd_bench_train_step --keep-attention measures it).
  bool keep_attention = false;
  std::optional<LoraOptions> lora;
  // Called as each decoder layer is loaded (a sharder keeps its part and frees the
  // rest, so a rank never holds the whole model).
  std::function<void(int64_t, DecoderLayer&)> on_layer;
};

struct AttentionStash;  // a layer's attention kept for its recompute (llama.cc)

struct DecoderLayer {
  torch::Tensor input_layernorm;           // float32 [hidden]
  torch::Tensor post_attention_layernorm;  // float32 [hidden]
  std::map<std::string, std::unique_ptr<LoraLinear>> linear;  // by module name
  std::map<std::string, torch::Tensor> bias;                  // Family::qkv_bias: q/k/v_proj's, compute dtype, frozen
};

class Llama {
 public:
  // From a directory with config.json and safetensors weights (or a herd/transformers
  // pre-quantized NF4 checkpoint). Quantizes one tensor at a time while loading.
  static Llama load(const std::filesystem::path& dir, const LoadOptions& options);
  // From tensors named as in HF checkpoints (float32); for tests and tools.
  static Llama from_tensors(const LlamaConfig& config, const std::map<std::string, torch::Tensor>& tensors,
                            const LoadOptions& options);

  // Token ids from outside (a micro-batch, a prompt) are checked once, on the host,
  // where they enter: std::invalid_argument names the first one outside the vocabulary.
  void check_token_ids(std::span<const int32_t> ids) const;
  // logits [B, T, vocab] in float32, on the model's device (the inputs may be on
  // any). attention_mask [B, T] (1 = token, 0 = right padding) is optional.
  // segment_ids [B, T] (packing: 1, 2, ... per conversation, each a run of
  // consecutive tokens; 0 = padding) keeps attention inside each conversation (each
  // run is attended alone) and restarts its positions, so each packed conversation
  // gets the logits it would get alone; padding positions get the attention output 0.
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {},
                        const torch::Tensor& segment_ids = {}) const;

  // Next-token cross-entropy at each position, float32 [B, T - 1] (position t
  // predicts ids[t + 1]); the arguments are forward's. On a GPU with the fused
  // kernels the logits stay in the hidden stream's dtype and the loss and its
  // gradient are one kernel each (no float32 copy of the logits). With a loss
  // chunk (set_loss_chunk) the logits exist a chunk of positions at a time.
  torch::Tensor next_token_loss(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {},
                                const torch::Tensor& segment_ids = {}) const;

  // Keys and values of the positions seen so far, per layer (generation).
  struct KVCache {
    std::vector<torch::Tensor> k, v;  // per layer: [B, kv_heads, positions, head_dim]
    int64_t length = 0;               // positions cached
  };
  // Incremental decoding without gradients: input_ids [B, T] continue the cached
  // positions (T > 1: a prompt, each token attending the cache and the ones before
  // it); the cache grows by T. The last position's logits, [B, vocab] in float32.
  torch::Tensor decode(const torch::Tensor& input_ids, KVCache& cache) const;

  // Next-token cross-entropy over one sequence of ids [T]: {sum of the T-1 losses, T-1}.
  std::pair<double, int64_t> sequence_loss(const std::vector<int32_t>& ids) const;

  const LlamaConfig& config() const { return config_; }
  const LoadOptions& options() const { return options_; }
  torch::Device device() const { return options_.device; }
  std::vector<DecoderLayer>& layers() { return layers_; }
  const std::vector<DecoderLayer>& layers() const { return layers_; }
  void set_training(bool training) { training_ = training; }
  // In training, keep only each decoder layer's input and recompute the layer in
  // backward (trainer.gradient_checkpointing): activation memory of one layer.
  void set_activation_checkpointing(bool on) { activation_checkpointing_ = on; }
  bool activation_checkpointing() const { return activation_checkpointing_; }
  // The loss over `positions` positions at a time (trainer.loss_chunk_tokens; 0: all
  // at once): each chunk's logits, loss and gradient with respect to the final
  // hidden state are made in the forward and the logits dropped, so the full
  // [B, T, vocab] logits and their gradient never exist and lm_head is not needed
  // in backward (worker/model/chunked_loss.h).
  // With activation checkpointing on a GPU: each layer's input in pinned host memory
  // between its forward and its backward (worker/model/activation_offload.h).
  void set_activation_offload(bool on);
  const ActivationOffload* activation_offload() const { return offload_.get(); }
  void set_loss_chunk(int64_t positions) { loss_chunk_ = positions; }
  int64_t loss_chunk() const { return loss_chunk_; }
  void set_weight_source(WeightSource* source) { source_ = source; }
  // The frozen tensors outside the decoder layers (a WeightSource swaps them).
  torch::Tensor& embed_tokens() { return embed_tokens_; }
  torch::Tensor& final_norm() { return norm_; }
  torch::Tensor& lm_head() { return lm_head_; }

  // The adapter's tensors under peft's names
  // (base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight, ...).
  std::vector<std::pair<std::string, torch::Tensor>> lora_tensors();
  std::vector<torch::Tensor> trainable_parameters();

 private:
  Llama() = default;
  // A pre-quantized weight of this name and [out, in] shape, if the checkpoint has one.
  using PrequantizedLookup =
      std::function<std::optional<FrozenWeight>(const std::string&, std::pair<int64_t, int64_t>)>;
  // The embedding (already read), the final norm and lm_head, on the device.
  void place_head(const std::function<torch::Tensor(const std::string&)>& get);
  // The frozen embedding's and lm_head's: bfloat16 with a bfloat16 hidden stream, else float32.
  torch::ScalarType head_dtype() const;
  void add_layer(int64_t index, const std::function<torch::Tensor(const std::string&)>& get,
                 const PrequantizedLookup& prequantized, torch::Generator* rng);
  // The decoder's output after the final norm, [B, T, hidden] in the hidden
  // stream's dtype.
  torch::Tensor final_hidden(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                             const torch::Tensor& segment_ids, KVCache* cache = nullptr) const;
  // forward's logits in the hidden stream's dtype.
  torch::Tensor stream_logits(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                              const torch::Tensor& segment_ids) const;
  // The named linear layers of `layer`, all reading x: one autograd node on the
  // fused path (linear_group.h).
  std::vector<torch::Tensor> linears(const DecoderLayer& layer, const std::vector<const char*>& names,
                                     const torch::Tensor& x) const;
  // With a stash (LoadOptions::keep_attention): the first forward fills it, the
  // recompute takes attention's output and backward from it.
  // With a cache (layer `cached` of it), keys and values join the cached ones.
  torch::Tensor attention(const DecoderLayer& layer, const torch::Tensor& x, const torch::Tensor& cos,
                          const torch::Tensor& sin, const torch::Tensor& mask, AttentionStash* stash,
                          KVCache* cache = nullptr, size_t cached = 0) const;
  torch::Tensor decoder_layer(const DecoderLayer& layer, const torch::Tensor& hidden, const torch::Tensor& cos,
                              const torch::Tensor& sin, const torch::Tensor& mask, AttentionStash* stash = nullptr,
                              KVCache* cache = nullptr, size_t cached = 0) const;
  struct CheckpointedLayer : torch::autograd::Function<CheckpointedLayer> {
    static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& hidden,
                                 const Llama* model, int64_t layer, const torch::Tensor& cos,
                                 const torch::Tensor& sin, const torch::Tensor& mask);
    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list grad);
  };

  LlamaConfig config_;
  LoadOptions options_;
  torch::Tensor embed_tokens_;  // [vocab, hidden] in head_dtype()
  std::vector<DecoderLayer> layers_;
  torch::Tensor norm_;     // float32 [hidden]
  torch::Tensor lm_head_;  // [vocab, hidden] in head_dtype() (the embedding when tied)
  bool training_ = false;
  bool activation_checkpointing_ = false;
  int64_t loss_chunk_ = 0;
  std::shared_ptr<ActivationOffload> offload_;
  WeightSource* source_ = nullptr;
};

// "model.layers.{i}.self_attn.q_proj" / "model.layers.{i}.mlp.gate_proj"
std::string module_path(int64_t layer, const std::string& module);

// A weight `name` [out, in] stored as transformers saves bitsandbytes 4-bit layers
// (herd quantize): its codes and scales, validated; none when `name` is not stored so.
std::optional<FrozenWeight> read_prequantized(const SafetensorsCheckpoint& ckpt, const std::string& name,
                                              std::pair<int64_t, int64_t> shape);

}  // namespace herd::model
