#include "common/process_memory.h"

#include <fstream>
#include <string>

namespace herd {

ProcessMemory process_memory() {
  ProcessMemory m;
  std::ifstream status("/proc/self/status");
  auto kib = [](const std::string& line) { return std::stoull(line.substr(line.find(':') + 1)) * 1024; };
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) m.resident_bytes = kib(line);
    if (line.rfind("VmHWM:", 0) == 0) m.peak_resident_bytes = kib(line);
  }
  return m;
}

void reset_peak_memory() { std::ofstream("/proc/self/clear_refs") << "5"; }

}  // namespace herd
