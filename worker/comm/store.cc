#include "worker/comm/store.h"

#include <fmt/format.h>

namespace herd::comm {

void InMemoryStore::set(const std::string& key, const std::string& value) {
  std::lock_guard lock(mutex_);
  values_[key] = value;
  changed_.notify_all();
}

std::string InMemoryStore::get(const std::string& key, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  if (!changed_.wait_for(lock, timeout, [&] { return values_.count(key) > 0; })) {
    throw CommError(fmt::format("store: key '{}' was not set within {} ms", key, timeout.count()));
  }
  return values_.at(key);
}

}  // namespace herd::comm
