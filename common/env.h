// The process environment as a lookup function, so that whatever reads it (the
// launcher's rank discovery, the job token) is tested with a map instead.
#pragma once

#include <functional>
#include <optional>
#include <string>

namespace herd {

using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
EnvLookup process_env();

}  // namespace herd
