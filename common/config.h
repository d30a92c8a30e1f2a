// The job configuration: the seed's llm_qlora YAML, unchanged, plus herd's own
// sections. Loading is strict: unknown keys, wrong types and out-of-range values
// are all reported together, each with its file, line, column and key.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace herd {

struct DataConfig {
  std::string type;     // vicuna | orca | raw_text (the seed's data processors)
  std::string dataset;  // local path or Hugging Face dataset id (vicuna, orca)
  std::string prompt_style = "seed";                // seed (the headers below) | chat_template (the model's own)
  std::string user_header = "### HUMAN:\n";         // vicuna
  std::string response_header = "### RESPONSE:\n";  // vicuna (this default), orca (required)
  std::string system_header, instruction_header;    // orca (required)
  std::vector<std::string> text_files;              // raw_text (required)
  int64_t chunk_char_len = 0, chunk_char_overlap = 0;  // raw_text (required): code points
  std::string chunk_prefix;                            // raw_text
  bool train_on_inputs = true;  // the seed's loss covered human turns too
  bool packing = false;
  double eval_fraction = 0.0;
  bool skip_invalid = false;
};

struct LoraConfig {
  int64_t r = 0;
  double lora_alpha = 0;
  std::vector<std::string> target_modules;
  double lora_dropout = 0;
  std::string bias;       // none | all | lora_only (peft's values)
  std::string task_type;  // CAUSAL_LM
  bool use_rslora = false;
  bool use_dora = false;         // peft's DoRA: a trained magnitude per output feature
  double loraplus_lr_ratio = 0;  // LoRA+: B's (and DoRA's magnitude's) lr over A's; 0: off

  double scaling() const;  // lora_alpha / r, or / sqrt(r) with use_rslora (peft)
};

struct TrainerConfig {
  int64_t batch_size = 0;
  int64_t gradient_accumulation_steps = 0;
  int64_t warmup_steps = 0;
  double num_train_epochs = 0;
  double learning_rate = 0;
  int64_t logging_steps = 0;
  // herd's additions; defaults are HF TrainingArguments' (what the seed ran with).
  int64_t seed = 42;
  int64_t max_steps = 0;  // 0: run num_train_epochs
  double max_grad_norm = 1.0;
  double weight_decay = 0.0;
  std::string lr_scheduler = "linear";  // linear | cosine | constant
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_epsilon = 1e-8;
  int64_t eval_steps = 0;  // 0: evaluate only at the end (needs data.eval_fraction)
  bool gradient_checkpointing = true;
  // The next-token loss over this many positions at a time (worker/model/chunked_loss.h):
  // the full logits and their gradient never exist. 0: all positions at once.
  int64_t loss_chunk_tokens = 0;
  // On a GPU with gradient_checkpointing: each layer's checkpointed input goes to
  // pinned host memory in the forward and comes back, prefetched, for its backward.
  bool offload_activations = false;
  // auto: the GPU named by LOCAL_RANK when this build has CUDA and sees one, else the CPU.
  std::string device = "auto";  // auto | cpu | cuda
  // The hidden stream in bfloat16 (transformers' bf16 mixed precision); off, it is
  // float32, as the seed's run had it.
  bool bf16 = false;
};

struct QuantizationConfig {
  bool enabled = true;  // the seed loaded the base model in 4 bits
  std::string quant_type = "nf4";
  bool double_quant = true;
  std::string compute_dtype = "bfloat16";  // bfloat16 | float16 | float32
};

struct DistributedConfig {
  int64_t world_size = 1;
  std::string backend = "auto";         // auto (nccl on GPU, gloo on CPU) | nccl | gloo
  std::string sharding = "full_shard";  // full_shard | no_shard
  int64_t min_workers = 0;              // 0: all of world_size
  double heartbeat_timeout_s = 30;
  double collective_timeout_s = 300;
  double replacement_timeout_s = 60;  // after a failure: wait this long for a replacement
                                      // before continuing with fewer workers (min_workers)
  bool regrow = true;                 // a gang below world_size takes spares back in at a checkpoint
  double regrow_after_s = 30;         // how long a spare must have been alive before it counts
};

struct CheckpointConfig {
  int64_t every_steps = 500;  // HF Trainer's save_steps default
  int64_t keep_last = 3;
  std::string resume = "never";  // never | auto
};

// The job token and TLS for the coordinator's RPCs. The token itself is never
// printed: `herd config check` shows it as <redacted>.
struct SecurityConfig {
  std::string token;       // literal; prefer token_file or HERD_JOB_TOKEN
  std::string token_file;  // file holding the token (trailing newline ignored)
  std::string tls_cert;    // PEM server certificate: TLS is on when set (with tls_key)
  std::string tls_key;     // PEM private key of tls_cert
  std::string tls_ca;      // PEM CA that clients verify the server's certificate with
  std::string tls_server_name;  // the name clients check the certificate for ("": the host they dial)
};

struct MetricsConfig {
  bool enabled = true;         // Prometheus endpoints (the coordinator's and the workers')
  int64_t port = 9400;         // the coordinator's
  int64_t worker_port = 9410;  // each worker's, on this port + its local rank; 0: none
  double peak_tflops = 0;      // the device's dense peak for MFU; 0: from the GPU's name (none on a CPU)
  bool tensorboard = true;     // rank 0 writes TensorBoard event files into {trainer_output_dir}/runs/
};

// Where a resolved value came from, for `herd config check`.
struct ResolvedValue {
  std::string key;     // dotted path, e.g. "trainer.batch_size"
  std::string value;   // as printed
  std::string origin;  // "FILE:LINE" or "default"
};

struct Config {
  std::filesystem::path source;  // the YAML file it was loaded from
  std::string text;              // the YAML it was parsed from (a coordinator serves it)
  std::string model_name;
  std::string base_model;
  std::string model_family;          // "llama" or empty (Auto* classes in the seed)
  int64_t model_context_window = 0;  // 0: the tokenizer's model_max_length
  DataConfig data;
  LoraConfig lora;
  TrainerConfig trainer;
  std::string trainer_output_dir;
  std::string model_output_dir;
  QuantizationConfig quantization;
  DistributedConfig distributed;
  CheckpointConfig checkpoint;
  SecurityConfig security;
  MetricsConfig metrics;

  std::vector<ResolvedValue> resolved;  // every key, in schema order

  // {model_output_dir}/{model_name}_adapter, as the seed's trainer saved it.
  std::filesystem::path adapter_dir() const;
  // The gang size a launcher gives (mpirun's -np, a Job's completions) in place of
  // distributed.world_size: min_workers follows it when the file leaves it unset,
  // and is capped by it otherwise.
  void set_world_size(int64_t n);
};

struct ConfigDiagnostic {
  std::string file;
  int line = 0;     // 1-based; 0 when the error concerns the whole file
  int column = 0;   // 1-based
  std::string key;  // dotted path of the offending key, may be empty
  std::string message;

  std::string str() const;  // "FILE:LINE:COL: KEY: MESSAGE"
};

class ConfigError : public std::runtime_error {
 public:
  explicit ConfigError(std::vector<ConfigDiagnostic> diagnostics);
  const std::vector<ConfigDiagnostic>& diagnostics() const { return diagnostics_; }

 private:
  std::vector<ConfigDiagnostic> diagnostics_;
};

// Loads and validates a config file; throws ConfigError listing every problem.
Config load_config(const std::filesystem::path& path);

// The resolved keys every worker of a job must share with its coordinator (key ->
// value as printed): what changes the numbers or when ranks meet (lora.*,
// quantization.*, trainer.* but the device, model_context_window,
// distributed.backend and .sharding, checkpoint.every_steps). Paths, ports,
// secrets and timeouts may differ between hosts; data is read by the coordinator alone.
std::map<std::string, std::string> shared_settings(const Config& config);
// The same from text already in memory; `name` stands for the file in messages.
Config parse_config(const std::string& yaml_text, const std::string& name);

// The LoRA target module names herd knows (Llama's linear layers).
const std::vector<std::string>& known_target_modules();

}  // namespace herd
