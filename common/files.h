// Writing a file so that a failure is seen. std::ofstream's last buffered bytes
// reach the file in its destructor, where a full disk goes unnoticed; these check
// every write and the close, and name the file and the cause.
#pragma once

#include <filesystem>
#include <fstream>
#include <string_view>

namespace herd {

// Writes `bytes` as the whole of `file`; std::runtime_error ("FILE: write failed:
// No space left on device") when any part fails.
void write_file(const std::filesystem::path& file, std::string_view bytes);

// Closes a stream written to `file`; the same error when any write or the close failed.
void close_file(std::ofstream& out, const std::filesystem::path& file);

}  // namespace herd
