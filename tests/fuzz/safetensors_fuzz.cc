// The safetensors reader on any bytes: a SafetensorsError naming the file, or a
// file whose every tensor lies inside it.
#include "common/safetensors.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto f = herd::SafetensorsFile::open(herd::fuzz::as_file(data, size, "model.safetensors"));
    for (const auto& name : f->names()) {
      const auto& t = f->tensor(name);
      if (t.nbytes != static_cast<size_t>(t.numel()) * herd::dtype_size(t.dtype)) __builtin_trap();
      volatile uint8_t sink = t.nbytes ? t.data[0] + t.data[t.nbytes - 1] : 0;  // mapped, or a fault
      (void)sink;
    }
  } catch (const herd::SafetensorsError&) {
  }
  return 0;
}
