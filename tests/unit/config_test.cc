#include "common/config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

namespace herd {
namespace {

std::string seed_text() {
  std::ifstream in(std::string(HERD_SOURCE_DIR) + "/configs/llama2_70b_chat_uncensored.yaml");
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The seed's file with one exact piece of text replaced (it must be there).
std::string seed_with(const std::string& from, const std::string& to) {
  std::string text = seed_text();
  size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << "test bug: '" << from << "' is not in the seed config";
  if (at != std::string::npos) text.replace(at, from.size(), to);
  return text;
}

std::vector<ConfigDiagnostic> errors_of(const std::string& yaml) {
  try {
    parse_config(yaml, "bad.yaml");
  } catch (const ConfigError& e) {
    return e.diagnostics();
  }
  return {};
}

std::string value_of(const Config& c, const std::string& key) {
  for (const auto& v : c.resolved) {
    if (v.key == key) return v.value + " @ " + v.origin;
  }
  return "<absent>";
}

TEST(Config, SeedFileLoadsWithTheSeedsValues) {
  Config c = load_config(std::string(HERD_SOURCE_DIR) + "/configs/llama2_70b_chat_uncensored.yaml");
  EXPECT_EQ(c.model_name, "llama2_70b_chat_uncensored");
  EXPECT_EQ(c.base_model, "TheBloke/Llama-2-70B-fp16");
  EXPECT_EQ(c.model_family, "llama");
  EXPECT_EQ(c.model_context_window, 4096);
  EXPECT_EQ(c.data.type, "vicuna");
  EXPECT_EQ(c.data.dataset, "ehartford/wizard_vicuna_70k_unfiltered");
  EXPECT_EQ(c.lora.r, 8);
  EXPECT_DOUBLE_EQ(c.lora.lora_alpha, 32);
  EXPECT_EQ(c.lora.target_modules, (std::vector<std::string>{"q_proj", "k_proj", "v_proj"}));
  EXPECT_DOUBLE_EQ(c.lora.lora_dropout, 0.05);
  EXPECT_EQ(c.lora.bias, "none");
  EXPECT_EQ(c.lora.task_type, "CAUSAL_LM");
  EXPECT_DOUBLE_EQ(c.lora.scaling(), 4.0);
  EXPECT_EQ(c.trainer.batch_size, 1);
  EXPECT_EQ(c.trainer.gradient_accumulation_steps, 4);
  EXPECT_EQ(c.trainer.warmup_steps, 100);
  EXPECT_DOUBLE_EQ(c.trainer.num_train_epochs, 3);
  EXPECT_DOUBLE_EQ(c.trainer.learning_rate, 1e-4);
  EXPECT_EQ(c.trainer.logging_steps, 20);
  EXPECT_EQ(c.trainer_output_dir, "trainer_outputs/");
  EXPECT_EQ(c.model_output_dir, "models/");
  EXPECT_EQ(c.adapter_dir(), std::filesystem::path("models/llama2_70b_chat_uncensored_adapter"));
}

TEST(Config, DefaultsAreWhatTheSeedsStackDid) {
  Config c = parse_config(seed_text(), "seed.yaml");
  EXPECT_EQ(c.data.user_header, "### HUMAN:\n");
  EXPECT_EQ(c.data.response_header, "### RESPONSE:\n");
  EXPECT_TRUE(c.data.train_on_inputs);
  EXPECT_TRUE(c.quantization.enabled);
  EXPECT_EQ(c.quantization.quant_type, "nf4");
  EXPECT_TRUE(c.quantization.double_quant);
  EXPECT_EQ(c.quantization.compute_dtype, "bfloat16");
  EXPECT_EQ(c.trainer.lr_scheduler, "linear");
  EXPECT_DOUBLE_EQ(c.trainer.max_grad_norm, 1.0);
  EXPECT_DOUBLE_EQ(c.trainer.weight_decay, 0.0);
  EXPECT_DOUBLE_EQ(c.trainer.adam_beta1, 0.9);
  EXPECT_DOUBLE_EQ(c.trainer.adam_beta2, 0.999);
  EXPECT_DOUBLE_EQ(c.trainer.adam_epsilon, 1e-8);
  EXPECT_TRUE(c.trainer.gradient_checkpointing);
  EXPECT_EQ(c.trainer.device, "auto");
  EXPECT_FALSE(c.trainer.bf16);
  EXPECT_EQ(c.trainer.loss_chunk_tokens, 0);
  EXPECT_FALSE(c.trainer.offload_activations);
  EXPECT_EQ(c.distributed.world_size, 1);
  EXPECT_EQ(c.distributed.min_workers, 1);
  EXPECT_TRUE(c.distributed.regrow);
  EXPECT_DOUBLE_EQ(c.distributed.regrow_after_s, 30);
}

TEST(Config, EveryValueCarriesItsOrigin) {
  Config c = parse_config(seed_text(), "seed.yaml");
  EXPECT_EQ(value_of(c, "lora.r"), "8 @ seed.yaml:9");
  EXPECT_EQ(value_of(c, "trainer.learning_rate"), "0.0001 @ seed.yaml:23");
  EXPECT_EQ(value_of(c, "lora.target_modules"), "[q_proj, k_proj, v_proj] @ seed.yaml:12");
  EXPECT_EQ(value_of(c, "data.user_header"), "\"### HUMAN:\\n\" @ default");
  EXPECT_EQ(value_of(c, "quantization.quant_type"), "\"nf4\" @ default");
  EXPECT_EQ(value_of(c, "trainer.max_grad_norm"), "1 @ default");
}

TEST(Config, OrcaAndRawTextReadTheirOwnKeys) {
  Config orca = parse_config(seed_with("  type: vicuna\n", "  type: orca\n  system_header: \"### System:\\n\"\n"
                                                           "  instruction_header: \"### Instruction:\\n\"\n"
                                                           "  response_header: \"### Response:\\n\"\n"),
                             "orca.yaml");
  EXPECT_EQ(orca.data.type, "orca");
  EXPECT_EQ(orca.data.system_header, "### System:\n");
  EXPECT_EQ(orca.data.instruction_header, "### Instruction:\n");
  EXPECT_EQ(orca.data.response_header, "### Response:\n");
  Config raw = parse_config(
      seed_with("  type: vicuna\n  dataset: ehartford/wizard_vicuna_70k_unfiltered  # HuggingFace hub\n",
                "  type: raw_text\n  text_files: [a.txt, b.txt]\n  chunk_char_len: 2000\n  chunk_char_overlap: 200\n"
                "  chunk_prefix: \"Book: \"\n"),
      "raw.yaml");
  EXPECT_EQ(raw.data.text_files, (std::vector<std::string>{"a.txt", "b.txt"}));
  EXPECT_EQ(raw.data.chunk_char_len, 2000);
  EXPECT_EQ(raw.data.chunk_char_overlap, 200);
  EXPECT_EQ(raw.data.chunk_prefix, "Book: ");
  EXPECT_EQ(raw.data.dataset, "");
}

TEST(Config, HerdSectionsOverrideDefaults) {
  Config c = parse_config(seed_text() +
                              "quantization:\n  enabled: false\n  compute_dtype: float32\n"
                              "distributed:\n  world_size: 8\n  min_workers: 6\n  sharding: no_shard\n"
                              "  regrow: false\n  regrow_after_s: 120\n",
                          "x.yaml");
  EXPECT_FALSE(c.quantization.enabled);
  EXPECT_EQ(c.quantization.compute_dtype, "float32");
  EXPECT_EQ(c.distributed.world_size, 8);
  EXPECT_EQ(c.distributed.min_workers, 6);
  EXPECT_EQ(c.distributed.sharding, "no_shard");
  EXPECT_FALSE(c.distributed.regrow);
  EXPECT_DOUBLE_EQ(c.distributed.regrow_after_s, 120);
  EXPECT_EQ(value_of(c, "distributed.world_size"), "8 @ x.yaml:31");
}

TEST(Config, ALaunchersWorldSizeCarriesMinWorkersUnlessTheFileSetsIt) {
  Config unset = parse_config(seed_text(), "x.yaml");  // world_size 1, min_workers left to follow it
  unset.set_world_size(4);
  EXPECT_EQ(unset.distributed.world_size, 4);
  EXPECT_EQ(unset.distributed.min_workers, 4);
  Config set = parse_config(seed_text() + "distributed:\n  world_size: 8\n  min_workers: 6\n", "x.yaml");
  set.set_world_size(16);
  EXPECT_EQ(set.distributed.min_workers, 6);
  set.set_world_size(4);
  EXPECT_EQ(set.distributed.min_workers, 4);
}

struct BrokenCase {
  const char* name;
  std::string yaml;
  int line;
  std::string key;
  std::string message;  // a piece of the message
};

// Test names in ctest stay readable: the case's name, not its bytes.
void PrintTo(const BrokenCase& c, std::ostream* os) { *os << c.name; }

class BrokenConfig : public ::testing::TestWithParam<BrokenCase> {};

TEST_P(BrokenConfig, NamesLineKeyAndReason) {
  const BrokenCase& bc = GetParam();
  auto errors = errors_of(bc.yaml);
  ASSERT_EQ(errors.size(), 1u) << "expected one error for " << bc.name << ", got " << errors.size()
                               << (errors.empty()
                                       ? ""
                                       : ": " + errors[0].str() + (errors.size() > 1 ? " | " + errors[1].str() : ""));
  EXPECT_EQ(errors[0].file, "bad.yaml");
  EXPECT_EQ(errors[0].line, bc.line) << errors[0].str();
  EXPECT_EQ(errors[0].key, bc.key) << errors[0].str();
  EXPECT_NE(errors[0].message.find(bc.message), std::string::npos)
      << "message '" << errors[0].message << "' lacks '" << bc.message << "'";
}

// Line numbers refer to configs/llama2_70b_chat_uncensored.yaml (26 lines).
INSTANTIATE_TEST_SUITE_P(
    Seed, BrokenConfig,
    ::testing::Values(
        BrokenCase{"unknown_key", seed_with("  batch_size: 1\n", "  batch_sz: 1\n"), 19, "trainer.batch_sz",
                   "did you mean 'batch_size'"},
        BrokenCase{"unknown_section", seed_text() + "quantisation:\n  enabled: false\n", 27, "quantisation",
                   "did you mean 'quantization'"},
        BrokenCase{"unknown_key_in_herd_section", seed_text() + "checkpoint:\n  every_step: 10\n", 28,
                   "checkpoint.every_step", "did you mean 'every_steps'"},
        BrokenCase{"int_not_a_number", seed_with("  r: 8\n", "  r: eight\n"), 9, "lora.r", "expected an integer"},
        BrokenCase{"int_given_a_float", seed_with("  batch_size: 1\n", "  batch_size: 1.5\n"), 19, "trainer.batch_size",
                   "expected an integer"},
        BrokenCase{"int_quoted", seed_with("  batch_size: 1\n", "  batch_size: \"1\"\n"), 19, "trainer.batch_size",
                   "got the string"},
        BrokenCase{"r_zero", seed_with("  r: 8\n", "  r: 0\n"), 9, "lora.r", "must be >= 1"},
        BrokenCase{"dropout_one", seed_with("  lora_dropout: 0.05\n", "  lora_dropout: 1.0\n"), 15, "lora.lora_dropout",
                   "[0, 1)"},
        BrokenCase{"dropout_negative", seed_with("  lora_dropout: 0.05\n", "  lora_dropout: -0.1\n"), 15,
                   "lora.lora_dropout", "[0, 1)"},
        BrokenCase{"unknown_target_module", seed_with("  - v_proj\n", "  - v_prj\n"), 14, "lora.target_modules",
                   "did you mean 'v_proj'"},
        BrokenCase{"target_module_twice", seed_with("  - v_proj\n", "  - q_proj\n"), 14, "lora.target_modules",
                   "listed twice"},
        BrokenCase{"unknown_data_type", seed_with("  type: vicuna\n", "  type: alpaca\n"), 6, "data.type",
                   "must be one of vicuna, orca, raw_text"},
        BrokenCase{"missing_required_key", seed_with("  learning_rate: 0.0001  # 1e-4\n", ""), 18,
                   "trainer.learning_rate", "missing required key"},
        BrokenCase{"missing_top_level_key", seed_with("model_name: llama2_70b_chat_uncensored\n", ""), 0, "model_name",
                   "missing required key"},
        BrokenCase{"required_key_without_value",
                   seed_with("  dataset: ehartford/wizard_vicuna_70k_unfiltered", "  dataset:"), 7, "data.dataset",
                   "has no value"},
        BrokenCase{"string_given_a_list",
                   seed_with("trainer_output_dir: trainer_outputs/", "trainer_output_dir: [a, b]"), 25,
                   "trainer_output_dir", "expected a string"},
        BrokenCase{"bool_not_a_bool", seed_with("  type: vicuna\n", "  type: vicuna\n  train_on_inputs: maybe\n"), 7,
                   "data.train_on_inputs", "expected true or false"},
        BrokenCase{"learning_rate_negative", seed_with("  learning_rate: 0.0001", "  learning_rate: -1"), 23,
                   "trainer.learning_rate", "must be > 0"},
        BrokenCase{"epochs_zero", seed_with("  num_train_epochs: 3", "  num_train_epochs: 0"), 22,
                   "trainer.num_train_epochs", "must be > 0"},
        BrokenCase{"task_type", seed_with("  task_type: CAUSAL_LM", "  task_type: SEQ_CLS"), 17, "lora.task_type",
                   "must be one of CAUSAL_LM"},
        BrokenCase{"bias", seed_with("  bias: none", "  bias: some"), 16, "lora.bias", "did you mean 'none'"},
        BrokenCase{"model_family", seed_with("model_family: llama", "model_family: mistral"), 3, "model_family",
                   "must be one of llama"},
        BrokenCase{"duplicate_key", seed_with("  r: 8\n", "  r: 8\n  r: 16\n"), 10, "lora.r", "duplicate key"},
        BrokenCase{"invalid_yaml", seed_with("  r: 8\n", "  r: [8\n"), 10, "", "invalid YAML"},
        BrokenCase{"min_workers_above_world_size", seed_text() + "distributed:\n  world_size: 2\n  min_workers: 3\n",
                   29, "distributed.min_workers", "must be <= distributed.world_size (2)"},
        BrokenCase{"regrow_after_negative", seed_text() + "distributed:\n  regrow_after_s: -1\n", 28,
                   "distributed.regrow_after_s", "must be >= 0"},
        BrokenCase{"regrow_not_a_bool", seed_text() + "distributed:\n  regrow: sometimes\n", 28, "distributed.regrow",
                   "expected true or false"},
        BrokenCase{"fp4", seed_text() + "quantization:\n  quant_type: fp4\n", 28, "quantization.quant_type",
                   "fp4 is not supported"},
        BrokenCase{"compute_dtype", seed_text() + "quantization:\n  compute_dtype: float8\n", 28,
                   "quantization.compute_dtype", "must be one of bfloat16, float16, float32"},
        BrokenCase{"section_not_a_mapping", seed_text() + "metrics: 5\n", 27, "metrics", "expected a mapping"},
        BrokenCase{"port_out_of_range", seed_text() + "metrics:\n  port: 70000\n", 28, "metrics.port", "1..65535"},
        BrokenCase{"device", seed_with("  logging_steps: 20\n", "  logging_steps: 20\n  device: tpu\n"), 25,
                   "trainer.device", "must be one of auto, cpu, cuda"},
        BrokenCase{"eval_steps_without_split",
                   seed_with("  logging_steps: 20\n", "  logging_steps: 20\n  eval_steps: 10\n"), 25,
                   "trainer.eval_steps", "needs data.eval_fraction"},
        BrokenCase{
            "orca_without_system_header",
            seed_with("  type: vicuna\n", "  type: orca\n  instruction_header: \"I\"\n  response_header: \"R\"\n"), 5,
            "data.system_header", "missing required key in section 'data'"},
        BrokenCase{"prompt_style", seed_with("  type: vicuna\n", "  type: vicuna\n  prompt_style: chatml\n"), 7,
                   "data.prompt_style", "must be one of seed, chat_template"},
        BrokenCase{
            "header_with_chat_template",
            seed_with("  type: vicuna\n", "  type: vicuna\n  prompt_style: chat_template\n  user_header: \"U\"\n"), 8,
            "data.user_header", "with chat_template the model's template formats the turns"},
        BrokenCase{"orca_key_in_vicuna", seed_with("  type: vicuna\n", "  type: vicuna\n  system_header: \"S\"\n"), 7,
                   "data.system_header", "is read by data.type orca only, and this config's type is vicuna"},
        BrokenCase{"dataset_in_raw_text",
                   seed_with("  type: vicuna\n",
                             "  type: raw_text\n  text_files: [a.txt]\n  chunk_char_len: 100\n"
                             "  chunk_char_overlap: 10\n"),
                   10, "data.dataset", "is read by data.type vicuna and orca only, and this config's type is raw_text"},
        BrokenCase{"raw_text_without_files",
                   seed_with("  type: vicuna\n  dataset: ehartford/wizard_vicuna_70k_unfiltered  # HuggingFace hub\n",
                             "  type: raw_text\n  chunk_char_len: 100\n  chunk_char_overlap: 10\n"),
                   5, "data.text_files", "missing required key in section 'data'"},
        BrokenCase{
            "raw_text_overlap_not_below_length",
            seed_with("  type: vicuna\n  dataset: ehartford/wizard_vicuna_70k_unfiltered  # HuggingFace hub\n",
                      "  type: raw_text\n  text_files: [a.txt]\n  chunk_char_len: 100\n  chunk_char_overlap: 100\n"),
            9, "data.chunk_char_overlap", "must be < data.chunk_char_len (100), got 100"},
        BrokenCase{"raw_text_files_not_a_list",
                   seed_with("  type: vicuna\n  dataset: ehartford/wizard_vicuna_70k_unfiltered  # HuggingFace hub\n",
                             "  type: raw_text\n  text_files: a.txt\n  chunk_char_len: 100\n  chunk_char_overlap: 1\n"),
                   7, "data.text_files", "expected a list of strings"},
        BrokenCase{"raw_text_masking_inputs",
                   seed_with("  type: vicuna\n  dataset: ehartford/wizard_vicuna_70k_unfiltered  # HuggingFace hub\n",
                             "  type: raw_text\n  text_files: [a.txt]\n  chunk_char_len: 100\n  chunk_char_overlap: 1\n"
                             "  train_on_inputs: false\n"),
                   10, "data.train_on_inputs", "raw_text has no inputs to leave out of the loss"},
        BrokenCase{"negative_loss_chunk",
                   seed_with("  logging_steps: 20\n", "  logging_steps: 20\n  loss_chunk_tokens: -1\n"), 25,
                   "trainer.loss_chunk_tokens", "must be >= 0"},
        BrokenCase{"offload_without_checkpointing",
                   seed_with("  logging_steps: 20\n",
                             "  logging_steps: 20\n  gradient_checkpointing: false\n  offload_activations: true\n"),
                   26, "trainer.offload_activations", "needs trainer.gradient_checkpointing: true"}),
    [](const ::testing::TestParamInfo<BrokenCase>& p) { return std::string(p.param.name); });

TEST(Config, ManyErrorsAreReportedTogetherInLineOrder) {
  std::string yaml = seed_with("  r: 8\n", "  r: -1\n");
  yaml = yaml.replace(yaml.find("  batch_size: 1\n"), 16, "  batch_sz: 1\n");
  yaml += "quantization:\n  compute_dtype: int3\n";
  yaml = yaml.replace(yaml.find("  warmup_steps: 100\n"), 20, "");
  // r out of range, batch_sz unknown (and so batch_size missing: one error, the typo),
  // warmup_steps missing, compute_dtype unknown.
  ASSERT_EQ(errors_of(yaml).size(), 4u);
  auto errors = errors_of(yaml);
  EXPECT_EQ(errors[0].key, "lora.r");
  EXPECT_EQ(errors[0].line, 9);
  EXPECT_EQ(errors[1].line, 18);  // a missing key is reported at its section
  EXPECT_EQ(errors[1].key, "trainer.warmup_steps");
  EXPECT_EQ(errors[2].line, 19);
  EXPECT_EQ(errors[2].key, "trainer.batch_sz");
  EXPECT_EQ(errors[3].line, 27);
  EXPECT_EQ(errors[3].key, "quantization.compute_dtype");
  try {
    parse_config(yaml, "bad.yaml");
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("4 errors in config"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("bad.yaml:19:3: trainer.batch_sz: unknown key"), std::string::npos)
        << e.what();
  }
}

TEST(Config, MissingSectionIsOneError) {
  std::string text = seed_text();
  size_t from = text.find("trainer:\n");
  size_t to = text.find("trainer_output_dir:");
  text.erase(from, to - from);
  auto errors = errors_of(text);
  ASSERT_EQ(errors.size(), 1u) << errors[0].str();
  EXPECT_EQ(errors[0].key, "trainer");
  EXPECT_NE(errors[0].message.find("missing required section"), std::string::npos);
}

TEST(Config, EmptyFileAndMissingFile) {
  auto errors = errors_of("");
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].message.find("empty"), std::string::npos);
  try {
    load_config("/nonexistent/herd.yaml");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.diagnostics()[0].file, "/nonexistent/herd.yaml");
    EXPECT_NE(e.diagnostics()[0].message.find("no such file"), std::string::npos);
  }
}

TEST(Config, AllLinearExpandsToEveryModule) {
  Config c = parse_config(seed_with("  target_modules:  # modules for which to train lora adapters\n  - q_proj\n"
                                    "  - k_proj\n  - v_proj\n",
                                    "  target_modules: all-linear\n"),
                          "x.yaml");
  EXPECT_EQ(c.lora.target_modules, known_target_modules());
  EXPECT_EQ(c.lora.target_modules.size(), 7u);
}

TEST(Config, RsLoraScaling) {
  Config c = parse_config(seed_with("  bias: none\n", "  bias: none\n  use_rslora: true\n"), "x.yaml");
  EXPECT_DOUBLE_EQ(c.lora.scaling(), 32.0 / std::sqrt(8.0));
}

TEST(Config, DoraAndLoraPlusAreReadAndCheckedByName) {
  Config c =
      parse_config(seed_with("  bias: none\n", "  bias: none\n  use_dora: true\n  loraplus_lr_ratio: 16\n"), "x.yaml");
  EXPECT_TRUE(c.lora.use_dora);
  EXPECT_DOUBLE_EQ(c.lora.loraplus_lr_ratio, 16.0);
  const Config seed = parse_config(seed_text(), "x.yaml");
  EXPECT_FALSE(seed.lora.use_dora);
  EXPECT_DOUBLE_EQ(seed.lora.loraplus_lr_ratio, 0.0);  // off

  auto errors = errors_of(seed_with("  bias: none\n", "  bias: none\n  loraplus_lr_ratio: 0\n"));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].key, "lora.loraplus_lr_ratio");
  errors = errors_of(seed_with("  bias: none\n", "  bias: none\n  use_dora: maybe\n"));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].key, "lora.use_dora");
  errors = errors_of(seed_with("  bias: none\n", "  bias: none\n  loraplus_lr_embedding: 1.0e-6\n"));
  ASSERT_EQ(errors.size(), 1u);  // no adapters on embeddings: peft's key for them is unknown here
  EXPECT_EQ(errors[0].key, "lora.loraplus_lr_embedding");
  for (const char* embedding : {"embed_tokens", "lm_head"}) {
    errors = errors_of(seed_with("  - q_proj\n", std::string("  - ") + embedding + "\n"));
    ASSERT_EQ(errors.size(), 1u) << embedding;
    EXPECT_EQ(errors[0].key, "lora.target_modules");
    EXPECT_NE(errors[0].message.find(std::string("'") + embedding +
                                     "': herd adapts the decoder's linear layers only (LoRA or DoRA on an embedding"),
              std::string::npos)
        << errors[0].message;
  }
}

TEST(Config, BooleansAsPyYamlReadsThem) {
  for (const char* yes : {"true", "True", "yes", "on"}) {
    Config c = parse_config(seed_text() + "quantization:\n  double_quant: " + yes + "\n", "x.yaml");
    EXPECT_TRUE(c.quantization.double_quant) << yes;
  }
  Config c = parse_config(seed_text() + "quantization:\n  enabled: False\n", "x.yaml");
  EXPECT_FALSE(c.quantization.enabled);
}

}  // namespace
}  // namespace herd
