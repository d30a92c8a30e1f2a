// The coordinator's journal: an append-only file of records, each with its length
// and a checksum, flushed to disk (fdatasync) before an append returns. What it
// holds is what was committed: a coordinator killed at any instant restarts from it.
// Chosen over SQLite because the coordinator only appends and replays: a log is the
// simplest structure with that contract, needs no schema, and a torn last record
// (a crash mid-write) is recognised by its checksum and dropped on reopen.
#pragma once

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace herd::coordinator {

struct JournalRecord {
  uint32_t type = 0;
  std::string payload;
};

class JournalError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Journal {
 public:
  // Opens (creating) the journal and replays it. A damaged last record (a torn
  // write) is cut off and reported in dropped_tail(); damage before the last
  // record is a JournalError naming the byte offset, since committed state would
  // be lost.
  explicit Journal(const std::filesystem::path& file);
  ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  // The records the file held when opened (appends are not kept in memory).
  const std::vector<JournalRecord>& records() const { return records_; }
  void forget_records() { std::vector<JournalRecord>().swap(records_); }  // once replayed
  bool dropped_tail() const { return dropped_tail_; }
  // Durable when it returns. A failed append (a full disk, an I/O error) cuts off
  // what it wrote and throws JournalError; every later append throws too, since the
  // caller went on without that record: the journal ends at the last record that
  // was durable, and a restart replays exactly that.
  void append(uint32_t type, const std::string& payload);

 private:
  std::filesystem::path file_;
  int fd_ = -1;
  off_t size_ = 0;  // bytes of whole records on disk
  std::string failed_;  // why an append failed; then no more appends
  std::vector<JournalRecord> records_;
  bool dropped_tail_ = false;
};

}  // namespace herd::coordinator
