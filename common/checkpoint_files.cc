#include "common/checkpoint_files.h"

#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/token_cache.h"

namespace herd {

namespace fs = std::filesystem;
using nlohmann::json;

fs::path checkpoint_dir(const fs::path& output_dir, uint64_t step) {
  return output_dir / fmt::format("checkpoint-{}", step);
}

std::string checkpoint_problem(const fs::path& dir) {
  std::ifstream in(dir / kCheckpointManifest);
  if (!in) return fmt::format("{} is missing", kCheckpointManifest);
  const json manifest = json::parse(in, nullptr, false);
  if (!manifest.is_object() || !manifest.contains("files") || !manifest["files"].is_object()) {
    return fmt::format("{} is not a manifest", kCheckpointManifest);
  }
  for (const auto& [name, want] : manifest["files"].items()) {
    // A file of the checkpoint's own directory: nothing else is read.
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
        name.find('\0') != std::string::npos) {
      return fmt::format("{} lists '{}', which is not a file name", kCheckpointManifest, name.substr(0, 256));
    }
    if (!want.is_object() || !want.contains("bytes") || !want["bytes"].is_number_unsigned() || !want.contains("hash") ||
        !want["hash"].is_string()) {
      return fmt::format("{} lists {} without its bytes (a number) and hash (a string)", kCheckpointManifest, name);
    }
    const fs::path file = dir / name;
    std::error_code error;
    if (!fs::is_regular_file(file, error)) return fmt::format("{} is missing", name);
    const uint64_t bytes = want["bytes"].get<uint64_t>();
    if (fs::file_size(file) != bytes) {
      return fmt::format("{} has {} bytes, the manifest says {}", name, fs::file_size(file), bytes);
    }
    if (fmt::format("{:016x}", hash_file(file)) != want["hash"].get<std::string>()) {
      return fmt::format("{} does not match its hash", name);
    }
  }
  return "";
}

std::string checkpoint_digest(const fs::path& dir) {
  return fmt::format("{:064x}", hash_file(dir / kCheckpointManifest));
}

}  // namespace herd
