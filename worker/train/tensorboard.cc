#include "worker/train/tensorboard.h"

#include <unistd.h>

#include <array>
#include <chrono>
#include <stdexcept>

#include <fmt/format.h>

#include "herd/proto/tensorboard_event.pb.h"

namespace herd::train {

namespace {

double wall_time() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

uint32_t crc32c(std::string_view bytes) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;  // the reflected polynomial
      t[i] = c;
    }
    return t;
  }();
  uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char b : bytes) crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(std::string_view bytes) {
  const uint32_t crc = crc32c(bytes);
  return ((crc >> 15) | (crc << 17)) + 0xA282EAD8u;
}

EventWriter::EventWriter(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  char host[256] = "localhost";
  ::gethostname(host, sizeof host - 1);
  file_ = dir / fmt::format("events.out.tfevents.{}.{}", static_cast<int64_t>(wall_time()), host);
  out_.open(file_, std::ios::binary | std::ios::app);
  if (!out_) throw std::runtime_error("cannot write " + file_.string());
  tensorboard::Event e;
  e.set_wall_time(wall_time());
  e.set_file_version("brain.Event:2");
  record(e.SerializeAsString());
}

void EventWriter::scalar(const std::string& tag, uint64_t step, double value) {
  tensorboard::Event e;
  e.set_wall_time(wall_time());
  e.set_step(static_cast<int64_t>(step));
  auto* v = e.mutable_summary()->add_value();
  v->set_tag(tag);
  v->set_simple_value(static_cast<float>(value));
  record(e.SerializeAsString());
}

void EventWriter::record(const std::string& event) {
  std::string header(8, '\0');
  const uint64_t length = event.size();
  for (int i = 0; i < 8; ++i) header[static_cast<size_t>(i)] = static_cast<char>((length >> (8 * i)) & 0xFF);
  auto put32 = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i) out_.put(static_cast<char>((v >> (8 * i)) & 0xFF));
  };
  out_.write(header.data(), 8);
  put32(masked_crc32c(header));
  out_.write(event.data(), static_cast<std::streamsize>(event.size()));
  put32(masked_crc32c(event));
}

}  // namespace herd::train
