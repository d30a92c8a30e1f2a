// Resolves `base_model` / `data.dataset` the way the Hugging Face hub libraries do
// offline: a local path as it is, else an `ORG/NAME` id looked up in the local hub
// cache. herd never downloads; when nothing is found the error names every path
// tried and the command that would fetch it.
#pragma once

#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace herd {

enum class HubRepoType { Model, Dataset };

// The environment variables the hub libraries read, captured once (tests pass
// their own).
struct HubEnvironment {
  std::optional<std::string> hf_hub_cache;           // HF_HUB_CACHE
  std::optional<std::string> huggingface_hub_cache;  // HUGGINGFACE_HUB_CACHE (older name)
  std::optional<std::string> hf_home;                // HF_HOME
  std::optional<std::string> xdg_cache_home;         // XDG_CACHE_HOME
  std::optional<std::string> home;                   // HOME

  static HubEnvironment from_process();
  // HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else HF_HOME/hub, else
  // $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub.
  std::filesystem::path hub_cache() const;
};

class HubNotFound : public std::runtime_error {
 public:
  HubNotFound(const std::string& message, std::vector<std::string> tried)
      : std::runtime_error(message), tried_(std::move(tried)) {}
  const std::vector<std::string>& tried() const { return tried_; }

 private:
  std::vector<std::string> tried_;
};

// True when `ref` has the shape of a hub id: "NAME" or "ORG/NAME", no leading
// '/', '.', '~'.
bool looks_like_hub_id(const std::string& ref);

// Returns the directory (or file, for a local path) that `ref` names; throws
// HubNotFound. `what` names the config key in the message (e.g. "base_model").
std::filesystem::path resolve_hub_path(const std::string& ref, HubRepoType type, const std::string& what,
                                       const HubEnvironment& env = HubEnvironment::from_process());

}  // namespace herd
