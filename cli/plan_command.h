// `herd plan CONFIG [--workers N] [--gpu-mem SIZE] [--tokens T]`: per-rank memory.
#pragma once

#include <CLI/CLI.hpp>

namespace herd::cli {
void add_plan_command(CLI::App& app, int& rc);
}
