#include "common/text.h"

#include <gtest/gtest.h>

namespace herd {

TEST(Text, EditDistance) {
  EXPECT_EQ(edit_distance("", ""), 0u);
  EXPECT_EQ(edit_distance("abc", ""), 3u);
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3u);
  EXPECT_EQ(edit_distance("batch_sz", "batch_size"), 2u);
  EXPECT_EQ(edit_distance("flaw", "lawn"), 2u);
}

TEST(Text, ClosestMatchPicksTheNearest) {
  std::vector<std::string> keys = {"batch_size", "warmup_steps", "learning_rate"};
  EXPECT_EQ(closest_match("batchsize", keys), "batch_size");
  EXPECT_EQ(closest_match("lerning_rate", keys), "learning_rate");
  EXPECT_EQ(closest_match("x", {}), "");
}

TEST(Text, QuotedEscapesControlCharacters) {
  EXPECT_EQ(c_quoted("### HUMAN:\n"), "\"### HUMAN:\\n\"");
  EXPECT_EQ(c_quoted("a\"b\\c\t\x01"), "\"a\\\"b\\\\c\\t\\x01\"");
}

}  // namespace herd
