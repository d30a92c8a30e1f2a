#pragma once

namespace herd {
const char* version();       // the project version, e.g. "0.1.0"
const char* git_revision();  // short commit hash, "-dirty" when the tree had changes
}  // namespace herd
