// Writes past a byte offset fail in this process while one of these lives: a file
// grown past `bytes` gets EFBIG (RLIMIT_FSIZE, SIGXFSZ ignored), as a full disk
// gives ENOSPC. No mount or privilege needed.
#pragma once

#include <sys/resource.h>

#include <csignal>
#include <cstdint>

namespace herd::testing {

class FileSizeLimit {
 public:
  explicit FileSizeLimit(uint64_t bytes) {
    ::getrlimit(RLIMIT_FSIZE, &was_);
    handler_ = std::signal(SIGXFSZ, SIG_IGN);
    rlimit small = was_;
    small.rlim_cur = bytes;
    ::setrlimit(RLIMIT_FSIZE, &small);
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &was_);
    std::signal(SIGXFSZ, handler_);
  }
  FileSizeLimit(const FileSizeLimit&) = delete;
  FileSizeLimit& operator=(const FileSizeLimit&) = delete;

 private:
  rlimit was_{};
  void (*handler_)(int) = nullptr;
};

}  // namespace herd::testing
