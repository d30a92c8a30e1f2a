// This process's memory as the kernel counts it: the one reader of /proc/self
// in herd's code.
#pragma once

#include <cstdint>

namespace herd {

struct ProcessMemory {
  uint64_t resident_bytes = 0;       // VmRSS
  uint64_t peak_resident_bytes = 0;  // VmHWM: since the start, or the last reset_peak_memory()
};

ProcessMemory process_memory();

// Starts VmHWM (and getrusage's ru_maxrss) over from the resident set now.
void reset_peak_memory();

}  // namespace herd
