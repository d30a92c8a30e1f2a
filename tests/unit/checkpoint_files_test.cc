// The check the coordinator runs on a committed checkpoint before resuming from it.
// The manifests here are what the fuzzer (tests/fuzz/checkpoint_manifest_fuzz.cc)
// found or could: each is a problem named, never an exception or a file read
// outside the checkpoint's directory.
#include "common/checkpoint_files.h"

#include <unistd.h>

#include <fstream>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "common/token_cache.h"

namespace herd {
namespace {

namespace fs = std::filesystem;

class CheckpointFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / fmt::format("herd-checkpoint-files-{}", ::getpid()) / "checkpoint-1";
    fs::remove_all(dir_.parent_path());
    fs::create_directories(dir_ / "sub");
    std::ofstream(dir_ / "adapter_model.safetensors") << "0123456789";
    std::ofstream(dir_.parent_path() / "outside") << "secret";
  }
  void TearDown() override { fs::remove_all(dir_.parent_path()); }
  std::string check(const std::string& manifest) {
    std::ofstream(dir_ / kCheckpointManifest) << manifest;
    return checkpoint_problem(dir_);
  }
  fs::path dir_;
};

TEST_F(CheckpointFiles, AMatchingManifestHasNoProblem) {
  const std::string hash = fmt::format("{:016x}", hash_file(dir_ / "adapter_model.safetensors"));
  EXPECT_EQ(check(R"({"step": 1, "files": {"adapter_model.safetensors": {"bytes": 10, "hash": ")" + hash + R"("}}})"),
            "");
  EXPECT_EQ(check(R"({"step": 1, "files": {"adapter_model.safetensors": {"bytes": 11, "hash": ")" + hash + R"("}}})"),
            "adapter_model.safetensors has 10 bytes, the manifest says 11");
}

// The fuzzer's first finding: a size given as a string threw json's type_error.
TEST_F(CheckpointFiles, WrongTypesAreAProblemNotAnException) {
  const std::string want =
      "checkpoint.json lists adapter_model.safetensors without its bytes (a number) and hash (a string)";
  EXPECT_EQ(check(R"({"files": {"adapter_model.safetensors": {"bytes": "10", "hash": 5}}})"), want);
  EXPECT_EQ(check(R"({"files": {"adapter_model.safetensors": {"bytes": -1, "hash": "0"}}})"), want);
  EXPECT_EQ(check(R"({"files": {"adapter_model.safetensors": 7}})"), want);
  EXPECT_EQ(check(R"({"files": []})"), "checkpoint.json is not a manifest");
  EXPECT_EQ(check("not json"), "checkpoint.json is not a manifest");
}

TEST_F(CheckpointFiles, OnlyTheCheckpointsOwnFilesAreRead) {
  for (const char* name : {"../outside", "/etc/passwd", "..", ".", ""}) {
    EXPECT_EQ(check(fmt::format(R"({{"files": {{"{}": {{"bytes": 6, "hash": "0"}}}}}})", name)),
              fmt::format("checkpoint.json lists '{}', which is not a file name", name));
  }
  EXPECT_EQ(check(R"({"files": {"sub": {"bytes": 0, "hash": "0"}}})"), "sub is missing");  // a directory
}

}  // namespace
}  // namespace herd
