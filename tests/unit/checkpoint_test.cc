// A training checkpoint's trainer_state.json: the loss history written at every
// checkpoint comes back from it exactly (every double to the bit), in the layout
// transformers writes.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "tests/unit/tiny_llama.h"
#include "worker/train/checkpoint.h"

namespace herd::train {
namespace {

namespace fs = std::filesystem;

model::Llama tiny_model() {
  model::LoadOptions o;
  model::LoraOptions lora;
  lora.r = 4;
  lora.lora_alpha = 8;
  lora.target_modules = {"q_proj", "v_proj"};
  o.lora = lora;
  return model::Llama::from_tensors(model::tiny_config(), model::random_tensors(model::tiny_config(), 1), o);
}

// Doubles of every magnitude, and values a decimal round trip loses when printed short.
double awkward(std::mt19937_64& g) {
  const uint64_t bits = (g() & 0x000fffffffffffffULL) | ((1023 + g() % 600 - 300) << 52);
  double d;
  std::memcpy(&d, &bits, sizeof d);
  return d;
}

TEST(Checkpoint, TheLossHistoryComesBackToTheBit) {
  const fs::path dir = fs::path(::testing::TempDir()) / "herd_checkpoint_test";
  fs::remove_all(dir);
  auto model = tiny_model();
  torch::optim::AdamW optimizer(model.trainable_parameters(), torch::optim::AdamWOptions(1e-3));
  std::mt19937_64 g(5);
  std::vector<StepLog> history;
  for (uint64_t step = 1; step <= 3000; ++step) {
    history.push_back({step, static_cast<double>(step) / 7, awkward(g), awkward(g), awkward(g), g() >> 1});
  }
  history[1].loss = 0.1;
  history[2].learning_rate = 0;
  const CheckpointMeta meta{"base", "CAUSAL_LM", "none", 7, 9000};
  const auto written = write_checkpoint(dir, 3000, model, optimizer, history, meta, 2);
  ASSERT_EQ(written, dir / "checkpoint-3000");

  std::ifstream in(written / "trainer_state.json");
  const auto state = nlohmann::json::parse(in);
  EXPECT_EQ(state.at("global_step").get<uint64_t>(), 3000u);
  EXPECT_EQ(state.at("max_steps").get<uint64_t>(), 9000u);
  EXPECT_EQ(state.at("epoch").get<double>(), 3000.0 / 7);
  ASSERT_EQ(state.at("log_history").size(), history.size());
  EXPECT_EQ(state.at("log_history")[1].at("loss").get<double>(), 0.1);

  auto fresh = tiny_model();
  torch::optim::AdamW fresh_optimizer(fresh.trainable_parameters(), torch::optim::AdamWOptions(1e-3));
  const auto loaded = load_checkpoint(written, fresh, fresh_optimizer);
  ASSERT_EQ(loaded.size(), history.size());
  for (size_t i = 0; i < history.size(); ++i) {
    const auto &a = loaded[i], &b = history[i];
    ASSERT_EQ(a.step, b.step);
    ASSERT_EQ(a.tokens, b.tokens) << a.step;
    for (auto [x, y] : {std::pair{a.epoch, b.epoch}, {a.loss, b.loss}, {a.learning_rate, b.learning_rate},
                        {a.grad_norm, b.grad_norm}}) {
      ASSERT_EQ(std::memcmp(&x, &y, sizeof x), 0) << "step " << a.step << ": " << x << " came back as " << y;
    }
  }
  fs::remove_all(dir);
}

TEST(Checkpoint, ATrainerStateWithoutAHistoryIsRefusedByName) {
  const fs::path dir = fs::path(::testing::TempDir()) / "herd_checkpoint_test_bad";
  fs::remove_all(dir);
  auto model = tiny_model();
  torch::optim::AdamW optimizer(model.trainable_parameters(), torch::optim::AdamWOptions(1e-3));
  const auto written = write_checkpoint(dir, 1, model, optimizer, {}, CheckpointMeta{}, 1);
  std::ofstream(written / "trainer_state.json") << R"({"global_step": 1})";
  try {
    load_checkpoint(written, model, optimizer);
    FAIL() << "loaded";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("trainer_state.json: no log_history"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

// LoRA+'s two parameter groups (A; B) come back with their state; an optimizer of
// another shape is refused naming the file and the setting.
TEST(Checkpoint, LoraPlusGroupsComeBackAndAnotherShapeIsRefused) {
  const fs::path dir = fs::path(::testing::TempDir()) / "herd_checkpoint_test_groups";
  fs::remove_all(dir);
  auto two_groups = [](model::Llama& m) {
    std::vector<torch::Tensor> a, b;
    for (auto& [name, t] : m.lora_tensors()) (name.ends_with(".lora_A.weight") ? a : b).push_back(t);
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(a, std::make_unique<torch::optim::AdamWOptions>(1e-3));
    groups.emplace_back(b, std::make_unique<torch::optim::AdamWOptions>(1.6e-2));
    return std::make_unique<torch::optim::AdamW>(std::move(groups), torch::optim::AdamWOptions(1e-3));
  };
  auto model = tiny_model();
  auto optimizer = two_groups(model);
  for (auto& [name, t] : model.lora_tensors()) t.mutable_grad() = torch::ones_like(t);
  optimizer->step();
  const auto written = write_checkpoint(dir, 1, model, *optimizer, {{1, 0.5, 1.0, 1e-3, 1.0, 10}}, {}, 1);

  auto fresh = tiny_model();
  auto same = two_groups(fresh);
  load_checkpoint(written, fresh, *same);
  ASSERT_EQ(same->param_groups().size(), 2u);
  for (size_t g = 0; g < 2; ++g) {
    const auto& want = optimizer->param_groups()[g];
    const auto& got = same->param_groups()[g];
    ASSERT_EQ(got.params().size(), want.params().size());
    for (size_t i = 0; i < got.params().size(); ++i) {
      const auto& s =
          static_cast<torch::optim::AdamWParamState&>(*same->state().at(got.params()[i].unsafeGetTensorImpl()));
      const auto& w =
          static_cast<torch::optim::AdamWParamState&>(*optimizer->state().at(want.params()[i].unsafeGetTensorImpl()));
      EXPECT_TRUE(torch::equal(s.exp_avg(), w.exp_avg())) << g << " " << i;
    }
  }
  torch::optim::AdamW one(fresh.trainable_parameters(), torch::optim::AdamWOptions(1e-3));
  try {
    load_checkpoint(written, fresh, one);
    FAIL() << "loaded";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("optimizer.pt: "), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("lora.loraplus_lr_ratio"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace herd::train
