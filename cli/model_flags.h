// What the model commands (cli/model_commands.h) share: the flags that pick a model
// directory and how it loads, and running a command with its errors reported.
#pragma once

#include <cstdint>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "worker/model/llama.h"

namespace herd::cli {

// The flags that pick a model as eval, chat and the tools use it, and the loading they ask for.
struct ModelFlags {
  std::string dir, adapter, dtype = "float32", device = "cpu";
  bool plain = false, bf16 = false;

  CLI::Option* device_option = nullptr;
  std::vector<CLI::Option*> loading;  // what a config says instead (herd eval CONFIG)

  void add_to(CLI::App* cmd, bool positional = true);
  // With a CONFIG, its quantization and trainer keys say how the model is loaded.
  void refuse_loading_flags() const;
  model::Llama load() const;
};

// "2.14 GB", "1.3 MB"
std::string size_text(uint64_t bytes);

// The directory of the running executable (herd-spm-train lives beside herd).
std::filesystem::path executable_dir();

// Runs f; an exception is printed as "herd WHAT: ..." and gives exit status 1.
template <class F>
int guarded(const char* what, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "herd " << what << ": " << e.what() << "\n";
    return 1;
  }
}

}  // namespace herd::cli
