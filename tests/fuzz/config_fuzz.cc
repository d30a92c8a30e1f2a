// The YAML config loader on any text: a ConfigError (file, line, key) or a config.
#include "common/config.h"

#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const herd::Config c = herd::parse_config(std::string(reinterpret_cast<const char*>(data), size), "fuzz.yaml");
    (void)herd::shared_settings(c);
  } catch (const herd::ConfigError&) {
  }
  return 0;
}
