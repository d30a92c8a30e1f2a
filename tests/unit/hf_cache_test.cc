#include "common/hf_cache.h"

#include <fstream>

#include <gtest/gtest.h>

namespace herd {
namespace {

namespace fs = std::filesystem;

class HubCache : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("herd-hub-" + std::to_string(::getpid()) + "-" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  // Lays out one cached repo the way huggingface_hub does.
  fs::path add_repo(const fs::path& cache, const std::string& folder, const std::string& revision) {
    fs::create_directories(cache / folder / "refs");
    std::ofstream(cache / folder / "refs" / "main") << revision;  // no newline, as the hub writes it
    fs::path snapshot = cache / folder / "snapshots" / revision;
    fs::create_directories(snapshot);
    std::ofstream(snapshot / "config.json") << "{}";
    return snapshot;
  }

  fs::path root_;
};

TEST_F(HubCache, CacheLocationFollowsTheHubsPrecedence) {
  HubEnvironment env;
  env.home = "/home/u";
  EXPECT_EQ(env.hub_cache(), fs::path("/home/u/.cache/huggingface/hub"));
  env.xdg_cache_home = "/xdg";
  EXPECT_EQ(env.hub_cache(), fs::path("/xdg/huggingface/hub"));
  env.hf_home = "~/hf";
  EXPECT_EQ(env.hub_cache(), fs::path("/home/u/hf/hub"));
  env.huggingface_hub_cache = "/old";
  EXPECT_EQ(env.hub_cache(), fs::path("/old"));
  env.hf_hub_cache = "/new";
  EXPECT_EQ(env.hub_cache(), fs::path("/new"));
}

TEST_F(HubCache, ModelIdResolvesToTheSnapshotThatRefsMainNames) {
  fs::path cache = root_ / "hub";
  add_repo(cache, "models--TheBloke--Llama-2-70B-fp16", "0123abcd");
  fs::path expected = add_repo(cache, "models--TheBloke--Llama-2-7B-fp16", "feedbeef");
  HubEnvironment env;
  env.hf_hub_cache = cache.string();
  EXPECT_EQ(resolve_hub_path("TheBloke/Llama-2-7B-fp16", HubRepoType::Model, "base_model", env), expected);
}

TEST_F(HubCache, DatasetsLiveUnderTheirOwnPrefix) {
  fs::path cache = root_ / "home" / "hub";
  fs::path expected = add_repo(cache, "datasets--ehartford--wizard_vicuna_70k_unfiltered", "cafe");
  add_repo(cache, "models--ehartford--wizard_vicuna_70k_unfiltered", "wrong");
  HubEnvironment env;
  env.hf_home = (root_ / "home").string();
  EXPECT_EQ(resolve_hub_path("ehartford/wizard_vicuna_70k_unfiltered", HubRepoType::Dataset, "data.dataset", env),
            expected);
}

TEST_F(HubCache, LocalPathWinsOverTheCache) {
  fs::path local = root_ / "my-model";
  fs::create_directories(local);
  HubEnvironment env;
  env.hf_hub_cache = (root_ / "hub").string();
  EXPECT_EQ(resolve_hub_path(local.string(), HubRepoType::Model, "base_model", env), local);
}

TEST_F(HubCache, NotFoundNamesEveryPathTriedAndTheDownloadCommand) {
  HubEnvironment env;
  env.hf_hub_cache = (root_ / "hub").string();
  try {
    resolve_hub_path("TheBloke/Llama-2-70B-fp16", HubRepoType::Model, "base_model", env);
    FAIL() << "must throw";
  } catch (const HubNotFound& e) {
    std::string m = e.what();
    ASSERT_EQ(e.tried().size(), 2u);
    EXPECT_NE(m.find("base_model TheBloke/Llama-2-70B-fp16 was not found"), std::string::npos) << m;
    EXPECT_NE(m.find((root_ / "hub" / "models--TheBloke--Llama-2-70B-fp16" / "refs" / "main").string()),
              std::string::npos)
        << m;
    EXPECT_NE(m.find("huggingface-cli download TheBloke/Llama-2-70B-fp16"), std::string::npos) << m;
  }
  try {
    resolve_hub_path("ehartford/wizard_vicuna_70k_unfiltered", HubRepoType::Dataset, "data.dataset", env);
    FAIL() << "must throw";
  } catch (const HubNotFound& e) {
    EXPECT_NE(std::string(e.what()).find("huggingface-cli download --repo-type dataset ehartford/"), std::string::npos);
  }
}

TEST_F(HubCache, DanglingRefIsReported) {
  fs::path cache = root_ / "hub";
  fs::path snapshot = add_repo(cache, "models--org--m", "abc");
  fs::remove_all(snapshot);
  HubEnvironment env;
  env.hf_hub_cache = cache.string();
  try {
    resolve_hub_path("org/m", HubRepoType::Model, "base_model", env);
    FAIL();
  } catch (const HubNotFound& e) {
    EXPECT_NE(std::string(e.what()).find("refs/main names abc, but that snapshot is missing"), std::string::npos);
  }
}

TEST(HubId, Shapes) {
  EXPECT_TRUE(looks_like_hub_id("TheBloke/Llama-2-70B-fp16"));
  EXPECT_TRUE(looks_like_hub_id("gpt2"));
  EXPECT_FALSE(looks_like_hub_id("/abs/path"));
  EXPECT_FALSE(looks_like_hub_id("./rel"));
  EXPECT_FALSE(looks_like_hub_id("~/m"));
  EXPECT_FALSE(looks_like_hub_id("a/b/c"));
  EXPECT_FALSE(looks_like_hub_id("a/"));
  EXPECT_FALSE(looks_like_hub_id("has space/x"));
  EXPECT_FALSE(looks_like_hub_id("data/sample-vicuna.json"));
  EXPECT_TRUE(looks_like_hub_id("Qwen/Qwen1.5-0.5B"));
}

}  // namespace
}  // namespace herd
