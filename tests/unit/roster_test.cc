#include "coordinator/roster.h"

#include <gtest/gtest.h>

namespace herd::coordinator {
namespace {

using grpc::StatusCode;

TEST(Roster, IdsCarryTheIncarnationAndLookupsSayWhyTheyFail) {
  Roster roster(3);
  const std::string a = roster.add("host-a", 100).id;
  EXPECT_EQ(a, "w3-0");
  EXPECT_EQ(roster.add("host-b", 100).id, "w3-1");
  Roster::Worker* w = nullptr;
  ASSERT_TRUE(roster.find(a, &w).ok());
  EXPECT_EQ(w->host, "host-a");
  EXPECT_EQ(roster.find("", &w).error_code(), StatusCode::INVALID_ARGUMENT);
  auto earlier = roster.find("w2-0", &w);
  EXPECT_EQ(earlier.error_code(), StatusCode::NOT_FOUND);
  EXPECT_NE(earlier.error_message().find("earlier run"), std::string::npos) << earlier.error_message();
  EXPECT_EQ(roster.find("w3-9", &w).error_message(), "unknown worker 'w3-9': register first");
  ASSERT_TRUE(roster.find(a, &w).ok());
  w->alive = false;
  w->death = "missed its heartbeats";
  EXPECT_EQ(roster.find(a, &w).error_message(), "worker w3-0 was declared dead (missed its heartbeats): register again");
}

TEST(Roster, SeatsTheEarliestLiveWorkersAndForgetsTheLongDead) {
  Roster roster(1);
  for (int i = 0; i < 4; ++i) roster.add("h", 100 + i);
  Roster::Worker* first = nullptr;
  ASSERT_TRUE(roster.find("w1-0", &first).ok());
  first->alive = false;
  EXPECT_EQ(roster.alive(), 3u);
  const auto alive = roster.alive_by_arrival();
  ASSERT_EQ(alive.size(), 3u);
  roster.seat(7, 2, alive, 40);
  EXPECT_EQ(roster.gang(), (std::vector<std::string>{"w1-1", "w1-2"}));
  EXPECT_EQ(roster.at("w1-2").rank, 1u);
  EXPECT_EQ(roster.at("w1-2").attempt, 7u);
  EXPECT_EQ(roster.at("w1-2").reported, 40u);
  EXPECT_EQ(roster.at("w1-3").attempt, 0u);  // a spare

  const auto overdue = roster.overdue(112.5, 10);  // silent since 101 and 102; the dead one is not counted
  ASSERT_EQ(overdue.size(), 2u);
  roster.forget_dead(7, 100 + 600);  // silent for exactly 600 s: kept
  EXPECT_EQ(roster.find("w1-0", &first).error_code(), StatusCode::FAILED_PRECONDITION);
  roster.forget_dead(7, 100 + 601);
  EXPECT_EQ(roster.find("w1-0", &first).error_code(), StatusCode::NOT_FOUND);
}

}  // namespace
}  // namespace herd::coordinator
