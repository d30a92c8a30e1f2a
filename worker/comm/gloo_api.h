// The boundary between herd and Debian's libgloo. libtorch exports its own, newer
// copy of Gloo's symbols (same names, other layouts), so libgloo cannot be linked
// into a binary that links libtorch: each would call into the other. herd's Gloo
// code lives in a separate module (libherd_gloo.so) that is dlopen'ed with
// RTLD_DEEPBIND, so it and libgloo bind to libgloo's symbols first. This header is
// all the two sides share: plain C++, no Gloo and no libtorch types.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

namespace herd::comm::gloo_api {

// The rendezvous store the module connects ranks through (herd's Store).
class KeyValue {
 public:
  virtual ~KeyValue() = default;
  virtual void set(const std::string& key, const std::vector<char>& value) = 0;
  // Waits until the key is set; throws std::runtime_error after `timeout`.
  virtual std::vector<char> get(const std::string& key, std::chrono::milliseconds timeout) = 0;
};

enum class DType { kFloat32, kFloat64, kInt64 };

// One connected group of ranks. Every call blocks until done, throws
// std::runtime_error (Gloo's message) on failure or after the timeout, and must be
// made in the same order on every rank.
class Group {
 public:
  virtual ~Group() = default;
  virtual void all_gather(const void* in, void* out, size_t bytes_per_rank) = 0;
  virtual void all_reduce_sum(void* data, size_t count, DType dtype) = 0;
  // in: size() chunks of count elements; out: the sum over ranks of chunk rank().
  virtual void reduce_scatter_sum(const void* in, void* out, size_t count, DType dtype) = 0;
  virtual void broadcast(void* data, size_t bytes, int root) = 0;
  virtual void barrier() = 0;
};

struct GroupOptions {
  int rank = 0, size = 1;
  std::string hostname;  // address peers reach this rank at ("" with iface: that interface's)
  std::string iface;     // network interface (GLOO_SOCKET_IFNAME)
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
};

// The module's one entry point: connects a full mesh through `store`. Throws
// std::runtime_error. The group keeps no reference to the store.
using ConnectFn = Group* (*)(KeyValue& store, const GroupOptions& options);
inline constexpr const char* kConnectSymbol = "herd_gloo_connect";

}  // namespace herd::comm::gloo_api
