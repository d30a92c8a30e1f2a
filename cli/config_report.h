// What `herd config check` and `herd train --dry-run` print about a config.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "common/config.h"

namespace herd::cli {

// Every key with its value and origin (file:line or default), then the derived
// values and where base_model and data.dataset resolve.
std::string config_table(const Config& config);
nlohmann::json config_json(const Config& config);

}  // namespace herd::cli
