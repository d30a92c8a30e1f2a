#include "coordinator/rendezvous_store.h"

#include <charconv>

#include <fmt/format.h>

#include "common/protocol_limits.h"

namespace herd::coordinator {

using grpc::Status;
using grpc::StatusCode;
using namespace herd::protocol;

std::optional<std::string> RendezvousStore::check_key(const std::string& key) {
  if (key.empty() || key.size() > kMaxKey) return fmt::format("key must have 1..{} characters, got {}", kMaxKey, key.size());
  for (unsigned char ch : key) {
    if (ch < 0x21 || ch > 0x7e) return fmt::format("key must be printable ASCII without spaces (byte 0x{:02x})", ch);
  }
  return std::nullopt;
}

std::optional<std::string> RendezvousStore::check_value(const std::string& value) {
  if (value.size() <= kMaxValue) return std::nullopt;
  return fmt::format("value of {} bytes is over the {} byte limit", value.size(), kMaxValue);
}

Status RendezvousStore::room_for(const std::string& key) const {
  if (values_.size() >= kMaxKeys && !values_.count(key)) {
    return {StatusCode::RESOURCE_EXHAUSTED, fmt::format("the store holds {} keys already", kMaxKeys)};
  }
  return Status::OK;
}

Status RendezvousStore::set(const std::string& key, const std::string& value) {
  if (auto s = room_for(key); !s.ok()) return s;
  values_[key] = value;
  return Status::OK;
}

std::optional<std::string> RendezvousStore::get(const std::string& key) const {
  auto it = values_.find(key);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

Status RendezvousStore::add(const std::string& key, int64_t delta, int64_t* value) {
  if (auto s = room_for(key); !s.ok()) return s;
  *value = 0;
  if (auto it = values_.find(key); it != values_.end()) {
    const auto& text = it->second;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *value);
    if (ec != std::errc() || end != text.data() + text.size()) {
      return {StatusCode::FAILED_PRECONDITION, fmt::format("key '{}' holds a value that is not a decimal counter", key)};
    }
  }
  if (__builtin_add_overflow(*value, delta, value)) {
    return {StatusCode::OUT_OF_RANGE, fmt::format("counter '{}' would overflow", key)};
  }
  values_[key] = std::to_string(*value);
  return Status::OK;
}

}  // namespace herd::coordinator
