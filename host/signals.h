// SIGINT and SIGTERM for every launch mode: the first asks for a stop at the next
// step boundary with a committed checkpoint (the flag the training loop reads); a
// second stops at once, with exit status 130.
#pragma once

#include <csignal>
#include <sys/types.h>

#include <vector>

namespace herd::host {

constexpr int kInterrupted = 130;  // a run stopped by a signal, as a shell reports SIGINT

// Installs the handlers; the flag is set by the first signal.
const volatile std::sig_atomic_t* stop_on_signals();

// For a supervisor: a second signal also kills these processes (SIGKILL) before exiting.
void kill_on_second_signal(const std::vector<pid_t>& children);

}  // namespace herd::host
