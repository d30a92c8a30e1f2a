// `herd quantize` and the `herd tools` model commands.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace herd::cli {

// Adds `quantize` and `tools {make-tiny-model, logits}` to the app; `rc` receives
// the exit status of the one that runs.
void add_model_commands(CLI::App& app, int& rc);

}  // namespace herd::cli
