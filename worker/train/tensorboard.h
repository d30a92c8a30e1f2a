// TensorBoard scalars without TensorFlow: an event file of TFRecord records (a
// length, its masked CRC-32C, an Event protobuf, its masked CRC-32C), the first
// naming the file version. TensorBoard's loader reads it as it reads PyTorch's
// SummaryWriter's files.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace herd::train {

// CRC-32C (Castagnoli), as TFRecord frames use it, and its masked form.
uint32_t crc32c(std::string_view bytes);
uint32_t masked_crc32c(std::string_view bytes);

class EventWriter {
 public:
  // Creates `dir` and, in it, events.out.tfevents.{seconds}.{host}.
  explicit EventWriter(const std::filesystem::path& dir);
  void scalar(const std::string& tag, uint64_t step, double value);
  void flush() { out_.flush(); }
  const std::filesystem::path& file() const { return file_; }

 private:
  void record(const std::string& event);

  std::filesystem::path file_;
  std::ofstream out_;
};

}  // namespace herd::train
