#include "coordinator/journal.h"

#include <unistd.h>

#include <fstream>

#include <gtest/gtest.h>

#include "tests/unit/file_size_limit.h"

namespace herd::coordinator {
namespace {

namespace fs = std::filesystem;

class JournalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    file_ = fs::temp_directory_path() / ("herd-journal-" + std::to_string(::getpid()) + "-" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove(file_);
  }
  void TearDown() override { fs::remove(file_); }
  fs::path file_;
};

TEST_F(JournalTest, AppendsSurviveReopening) {
  {
    Journal j(file_);
    EXPECT_TRUE(j.records().empty());
    j.append(1, "step 1");
    j.append(2, std::string("binary\0payload", 14));
  }
  Journal j(file_);
  ASSERT_EQ(j.records().size(), 2u);
  EXPECT_EQ(j.records()[0].type, 1u);
  EXPECT_EQ(j.records()[0].payload, "step 1");
  EXPECT_EQ(j.records()[1].payload, std::string("binary\0payload", 14));
  EXPECT_FALSE(j.dropped_tail());
  j.append(3, "after reopen");
  EXPECT_EQ(Journal(file_).records().size(), 3u);
}

TEST_F(JournalTest, ATornLastRecordIsDroppedAndTheJournalGoesOn) {
  {
    Journal j(file_);
    j.append(1, "committed");
    j.append(1, "torn by a crash");
  }
  fs::resize_file(file_, fs::file_size(file_) - 5);  // the last write never finished
  {
    Journal j(file_);
    ASSERT_EQ(j.records().size(), 1u);
    EXPECT_TRUE(j.dropped_tail());
    j.append(1, "next");
  }
  Journal j(file_);
  ASSERT_EQ(j.records().size(), 2u);
  EXPECT_EQ(j.records()[1].payload, "next");
  EXPECT_FALSE(j.dropped_tail());
}

TEST_F(JournalTest, DamageBeforeTheEndIsAnError) {
  {
    Journal j(file_);
    j.append(1, "first record");
    j.append(1, "second record");
  }
  {
    std::fstream f(file_, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(18);  // inside the first record's payload
    f.put('X');
  }
  try {
    Journal j(file_);
    FAIL() << "must refuse";
  } catch (const JournalError& e) {
    EXPECT_NE(std::string(e.what()).find("damaged record at byte 0 before the end"), std::string::npos) << e.what();
  }
}

// A write that fails part way (here: past RLIMIT_FSIZE, EFBIG; a full disk is ENOSPC)
// leaves the journal as it was, and the journal takes nothing more: its owner went
// on without the record.
TEST_F(JournalTest, AFailedAppendLeavesTheLastDurableRecordLastAndStopsAppending) {
  Journal j(file_);
  j.append(1, "durable");
  const auto durable = fs::file_size(file_);
  std::string error;
  try {
    herd::testing::FileSizeLimit limit(durable + 20);  // the next record's header and 4 bytes of its payload
    j.append(1, std::string(100, 'x'));
  } catch (const JournalError& e) {
    error = e.what();
  }
  EXPECT_NE(error.find("write failed: File too large"), std::string::npos) << error;
  EXPECT_EQ(fs::file_size(file_), durable);
  try {
    j.append(1, "after the failure");
    FAIL() << "must refuse";
  } catch (const JournalError& e) {
    EXPECT_NE(std::string(e.what()).find("not appending after an earlier failure (write failed: File too large)"),
              std::string::npos)
        << e.what();
  }
  Journal reopened(file_);
  ASSERT_EQ(reopened.records().size(), 1u);
  EXPECT_EQ(reopened.records()[0].payload, "durable");
  EXPECT_FALSE(reopened.dropped_tail());
}

}  // namespace
}  // namespace herd::coordinator
