// `herd data ...`: look at a conversation dataset as training will see it.
#pragma once

#include <CLI/CLI.hpp>

namespace herd::cli {

void add_data_commands(CLI::App& app, int& rc);

}  // namespace herd::cli
