// The commands that load or write models: eval, chat, quantize, merge, export and the
// developer tools. Each adds itself to the app; `rc` receives the exit status of the
// one that runs.
#pragma once

#include <CLI/CLI.hpp>

namespace herd::cli {

void add_eval_command(CLI::App& app, int& rc);       // eval_command.cc
void add_chat_command(CLI::App& app, int& rc);       // chat_command.cc
void add_convert_commands(CLI::App& app, int& rc);   // convert_commands.cc: quantize, merge, export gguf
void add_tools_commands(CLI::App& app, int& rc);     // tools_commands.cc

}  // namespace herd::cli
