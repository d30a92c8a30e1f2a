#include "common/hf_cache.h"

#include <cctype>
#include <cstdlib>
#include <fstream>

#include <fmt/format.h>

namespace herd {

namespace fs = std::filesystem;

static std::optional<std::string> env_var(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

static fs::path expand_user(const std::string& p, const std::optional<std::string>& home) {
  if (home && (p == "~" || p.rfind("~/", 0) == 0)) return fs::path(*home) / p.substr(p.size() > 1 ? 2 : 1);
  return p;
}

HubEnvironment HubEnvironment::from_process() {
  return {env_var("HF_HUB_CACHE"), env_var("HUGGINGFACE_HUB_CACHE"), env_var("HF_HOME"), env_var("XDG_CACHE_HOME"),
          env_var("HOME")};
}

fs::path HubEnvironment::hub_cache() const {
  if (hf_hub_cache) return expand_user(*hf_hub_cache, home);
  if (huggingface_hub_cache) return expand_user(*huggingface_hub_cache, home);
  if (hf_home) return expand_user(*hf_home, home) / "hub";
  if (xdg_cache_home) return expand_user(*xdg_cache_home, home) / "huggingface" / "hub";
  return fs::path(home.value_or("/root")) / ".cache" / "huggingface" / "hub";
}

bool looks_like_hub_id(const std::string& ref) {
  if (ref.empty() || ref[0] == '/' || ref[0] == '.' || ref[0] == '~') return false;
  // A file name is a local path, not a repository ("data/sample.json").
  for (const char* ext : {".json", ".jsonl", ".txt", ".parquet", ".safetensors", ".bin", ".model"}) {
    const std::string e = ext;
    if (ref.size() > e.size() && ref.compare(ref.size() - e.size(), e.size(), e) == 0) return false;
  }
  size_t slash = ref.find('/');
  if (slash != std::string::npos &&
      (slash == 0 || slash + 1 == ref.size() || ref.find('/', slash + 1) != std::string::npos)) {
    return false;
  }
  for (char c : ref) {
    bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == '/';
    if (!ok) return false;
  }
  return true;
}

fs::path resolve_hub_path(const std::string& ref, HubRepoType type, const std::string& what,
                          const HubEnvironment& env) {
  std::vector<std::string> tried;
  std::error_code ec;
  if (fs::exists(ref, ec)) return fs::path(ref);
  tried.push_back(fmt::format("{} (local path: does not exist)", fs::absolute(ref, ec).string()));

  const bool dataset = type == HubRepoType::Dataset;
  if (looks_like_hub_id(ref)) {
    // The hub cache layout: <cache>/<models|datasets>--ORG--NAME/refs/main holds
    // the commit hash; snapshots/<hash>/ holds the files.
    std::string folder = (dataset ? "datasets--" : "models--") + ref;
    for (size_t p = folder.find('/'); p != std::string::npos; p = folder.find('/', p)) {
      folder.replace(p, 1, "--");
    }
    fs::path repo = env.hub_cache() / folder;
    fs::path ref_file = repo / "refs" / "main";
    std::ifstream in(ref_file);
    std::string revision;
    if (in && std::getline(in, revision) && !revision.empty()) {
      fs::path snapshot = repo / "snapshots" / revision;
      if (fs::is_directory(snapshot, ec)) return snapshot;
      tried.push_back(
          fmt::format("{} (refs/main names {}, but that snapshot is missing)", snapshot.string(), revision));
    } else {
      tried.push_back(fmt::format("{} (no such file: not in the hub cache)", ref_file.string()));
    }
  }

  std::string message = fmt::format("{} {} was not found. Tried:", what, ref);
  for (const auto& t : tried) message += "\n  " + t;
  if (looks_like_hub_id(ref)) {
    message += fmt::format(
        "\nherd never downloads. Fetch it into the hub cache on a machine with network access:\n"
        "  huggingface-cli download {}{}\n"
        "(the cache is HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub), or give a local path.",
        dataset ? "--repo-type dataset " : "", ref);
  }
  throw HubNotFound(message, tried);
}

}  // namespace herd
