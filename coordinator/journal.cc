#include "coordinator/journal.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "common/token_cache.h"

namespace herd::coordinator {

namespace {

// Record: u32 payload length, u32 type, u64 hash of (type, payload), payload.
constexpr size_t kRecordHeader = 16;

uint64_t record_hash(uint32_t type, const std::string& payload) {
  return hash_bytes(payload, 0x6A6F75726E616CULL + type);
}

}  // namespace

Journal::Journal(const std::filesystem::path& file) : file_(file) {
  std::string bytes;
  {
    std::ifstream in(file, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    bytes = s.str();
  }
  size_t pos = 0;
  while (pos < bytes.size()) {
    bool ok = bytes.size() - pos >= kRecordHeader;
    uint32_t length = 0, type = 0;
    uint64_t hash = 0;
    if (ok) {
      std::memcpy(&length, bytes.data() + pos, 4);
      std::memcpy(&type, bytes.data() + pos + 4, 4);
      std::memcpy(&hash, bytes.data() + pos + 8, 8);
      ok = bytes.size() - pos - kRecordHeader >= length;
    }
    std::string payload = ok ? bytes.substr(pos + kRecordHeader, length) : std::string();
    ok = ok && record_hash(type, payload) == hash;
    if (!ok) {
      const bool last = (bytes.size() - pos < kRecordHeader || pos + kRecordHeader + length >= bytes.size());
      if (!last) {
        throw JournalError(
            fmt::format("{}: damaged record at byte {} before the end of the journal; committed "
                        "state after it cannot be trusted",
                        file.string(), pos));
      }
      dropped_tail_ = true;
      std::filesystem::resize_file(file, pos);  // a torn write: never committed
      break;
    }
    records_.push_back({type, std::move(payload)});
    pos += kRecordHeader + length;
  }
  fd_ = ::open(file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0)
    throw JournalError(fmt::format("{}: cannot open for appending: {}", file.string(), std::strerror(errno)));
  size_ = static_cast<off_t>(pos);
}

Journal::~Journal() {
  if (fd_ >= 0) ::close(fd_);
}

void Journal::append(uint32_t type, const std::string& payload) {
  if (!failed_.empty()) {
    throw JournalError(fmt::format("{}: not appending after an earlier failure ({})", file_.string(), failed_));
  }
  std::string record(kRecordHeader, '\0');
  const auto length = static_cast<uint32_t>(payload.size());
  const uint64_t hash = record_hash(type, payload);
  std::memcpy(record.data(), &length, 4);
  std::memcpy(record.data() + 4, &type, 4);
  std::memcpy(record.data() + 8, &hash, 8);
  record += payload;
  auto fail = [&](const char* what) {
    failed_ = fmt::format("{} failed: {}", what, std::strerror(errno));
    // Whatever part of the record reached the file goes; were this to fail too, the
    // torn tail is the journal's last bytes, which reopening drops.
    if (::ftruncate(fd_, size_) == 0) ::fdatasync(fd_);
    throw JournalError(fmt::format("{}: {}", file_.string(), failed_));
  };
  for (size_t done = 0; done < record.size();) {
    ssize_t n = ::write(fd_, record.data() + done, record.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("write");
    }
    done += static_cast<size_t>(n);
  }
  if (::fdatasync(fd_) != 0) fail("fdatasync");
  size_ += static_cast<off_t>(record.size());
}

}  // namespace herd::coordinator
