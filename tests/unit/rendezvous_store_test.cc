#include "coordinator/rendezvous_store.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>

#include "common/protocol_limits.h"

namespace herd::coordinator {
namespace {

using grpc::StatusCode;

TEST(RendezvousStore, ValuesCountersAndWhatIsMissing) {
  RendezvousStore store;
  ASSERT_TRUE(store.set("nccl/unique_id", std::string("\x00\x01\x02", 3)).ok());
  EXPECT_EQ(store.get("nccl/unique_id"), std::string("\x00\x01\x02", 3));
  EXPECT_FALSE(store.get("absent"));
  int64_t value = 0;
  ASSERT_TRUE(store.add("arrived", 1, &value).ok());
  ASSERT_TRUE(store.add("arrived", 2, &value).ok());
  EXPECT_EQ(value, 3);
  EXPECT_EQ(store.add("nccl/unique_id", 1, &value).error_code(), StatusCode::FAILED_PRECONDITION);
  ASSERT_TRUE(store.set("big", std::to_string(std::numeric_limits<int64_t>::max())).ok());
  EXPECT_EQ(store.add("big", 1, &value).error_code(), StatusCode::OUT_OF_RANGE);
  EXPECT_EQ(store.missing(std::vector<std::string>{"arrived", "never", "big"}), std::vector<std::string>{"never"});
  store.clear();
  EXPECT_FALSE(store.get("arrived"));
}

TEST(RendezvousStore, KeysValuesAndSizeAreBounded) {
  EXPECT_FALSE(RendezvousStore::check_key("gloo/rank-0"));
  EXPECT_EQ(*RendezvousStore::check_key(""), "key must have 1..256 characters, got 0");
  EXPECT_EQ(*RendezvousStore::check_key("a b"), "key must be printable ASCII without spaces (byte 0x20)");
  EXPECT_FALSE(RendezvousStore::check_value(std::string(protocol::kMaxValue, 'x')));
  EXPECT_TRUE(RendezvousStore::check_value(std::string(protocol::kMaxValue + 1, 'x')));
  RendezvousStore store;
  for (size_t i = 0; i < protocol::kMaxKeys; ++i) ASSERT_TRUE(store.set(std::to_string(i), "").ok());
  EXPECT_EQ(store.set("one-more", "").error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(store.set("0", "replaced").ok());  // an existing key takes no room
}

}  // namespace
}  // namespace herd::coordinator
