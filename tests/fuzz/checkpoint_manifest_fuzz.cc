// The checkpoint check the coordinator runs on resume, with the input as the
// manifest (checkpoint.json) beside one file: a problem, or "" only when every
// listed file matches; never a crash, an exception or a file outside the directory.
#include <fstream>

#include "common/checkpoint_files.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto dir = herd::fuzz::scratch() / "checkpoint-1";
  static const bool made = [&] {
    std::filesystem::create_directories(dir);
    std::ofstream(dir / "adapter_model.safetensors") << "0123456789";
    return true;
  }();
  (void)made;
  std::ofstream(dir / herd::kCheckpointManifest, std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  (void)herd::checkpoint_problem(dir);
  return 0;
}
