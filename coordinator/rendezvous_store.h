// The rendezvous store of one gang attempt: what ranks publish to find each other
// (Gloo's addresses, NCCL's unique id) and counters. Its keys and values are
// checked against the protocol's limits (common/protocol_limits.h). Plain data: the
// Job holds its lock around it, wakes KvWait's waiters and empties it when a new
// gang forms.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <grpcpp/support/status.h>

namespace herd::coordinator {

class RendezvousStore {
 public:
  // What is wrong with a key or a value as a request carries it, or nothing.
  static std::optional<std::string> check_key(const std::string& key);
  static std::optional<std::string> check_value(const std::string& value);

  grpc::Status set(const std::string& key, const std::string& value);
  std::optional<std::string> get(const std::string& key) const;
  // Adds `delta` to the decimal counter at `key` (0 when unset); `*value` is the sum.
  grpc::Status add(const std::string& key, int64_t delta, int64_t* value);
  // The keys of `keys` not set yet.
  template <class Keys>
  std::vector<std::string> missing(const Keys& keys) const {
    std::vector<std::string> out;
    for (const auto& k : keys) {
      if (!values_.count(k)) out.push_back(k);
    }
    return out;
  }
  void clear() { values_.clear(); }

 private:
  grpc::Status room_for(const std::string& key) const;

  std::unordered_map<std::string, std::string> values_;
};

}  // namespace herd::coordinator
