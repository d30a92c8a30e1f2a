#include "common/files.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

namespace herd {

namespace {

[[noreturn]] void fail(const std::filesystem::path& file, int error) {
  throw std::runtime_error(
      fmt::format("{}: write failed: {}", file.string(), error ? std::strerror(error) : "the stream reports an error"));
}

}  // namespace

void write_file(const std::filesystem::path& file, std::string_view bytes) {
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail(file, errno);
  for (size_t done = 0; done < bytes.size();) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int error = errno;
      ::close(fd);
      fail(file, error);
    }
    done += static_cast<size_t>(n);
  }
  if (::close(fd) != 0) fail(file, errno);
}

void close_file(std::ofstream& out, const std::filesystem::path& file) {
  errno = 0;
  out.close();
  if (!out) fail(file, errno);
}

}  // namespace herd
