#include "host/signals.h"

#include <unistd.h>

#include <algorithm>
#include <array>

namespace herd::host {

namespace {

volatile std::sig_atomic_t g_stop = 0;
std::array<pid_t, 1024> g_children{};  // read in the handler: a fixed array, no allocation
volatile std::sig_atomic_t g_child_count = 0;

void on_signal(int) {
  if (g_stop) {
    for (std::sig_atomic_t i = 0; i < g_child_count; ++i) ::kill(g_children[static_cast<size_t>(i)], SIGKILL);
    ::_exit(kInterrupted);
  }
  g_stop = 1;
}

}  // namespace

const volatile std::sig_atomic_t* stop_on_signals() {
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  ::sigaction(SIGINT, &action, nullptr);
  ::sigaction(SIGTERM, &action, nullptr);
  return &g_stop;
}

void kill_on_second_signal(const std::vector<pid_t>& children) {
  g_child_count = 0;
  for (size_t i = 0; i < children.size() && i < g_children.size(); ++i) g_children[i] = children[i];
  g_child_count = static_cast<std::sig_atomic_t>(std::min(children.size(), g_children.size()));
}

}  // namespace herd::host
