// Sizes and waits the coordinator accepts in a request (proto/herd.proto). The
// coordinator refuses what exceeds them; the client keeps within them.
#pragma once

#include <cstddef>
#include <cstdint>

namespace herd::protocol {

constexpr size_t kMaxHost = 253;          // RegisterRequest.host: a DNS name
constexpr size_t kMaxListEntries = 64;    // RegisterRequest.devices, .capabilities
constexpr size_t kMaxEntry = 256;         // one device or capability
constexpr size_t kMaxSettings = 256;      // RegisterRequest.settings entries
constexpr size_t kMaxSetting = 4096;      // one setting's key or value
constexpr size_t kMaxKey = 256;           // a rendezvous store key
constexpr size_t kMaxValue = 64 * 1024;   // a rendezvous store value
constexpr size_t kMaxKeys = 65536;        // keys in one attempt's store
constexpr size_t kMaxWaitKeys = 256;      // keys one KvWait waits for
constexpr uint32_t kMaxGangWaitS = 3600;  // WaitForGangRequest.timeout_seconds
constexpr uint32_t kMaxKvWaitMs = 600000; // KvWaitRequest.timeout_ms
constexpr size_t kMaxPath = 4096;         // a checkpoint path
constexpr size_t kMaxReason = 1024;       // a failure report's or a cancel's reason
// A request: what the coordinator receives and a client sends. A reply or a
// micro-batch: what the coordinator sends and a client receives.
constexpr size_t kMaxRequestBytes = size_t{1} << 20;
constexpr size_t kMaxReplyBytes = size_t{64} << 20;

}  // namespace herd::protocol
