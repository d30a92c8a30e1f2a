// The journal on resume. First byte even: the input is the journal file (checksums
// turn most of it away: a JournalError naming the byte, or a torn tail dropped).
// Odd: the rest is cut into records (type, length, payload) written with valid
// checksums, and a job replays them: a JournalError, or a job in a state it can
// serve. Never a crash or another exception.
#include <filesystem>

#include "coordinator/job.h"
#include "tests/fuzz/fuzz_input.h"

namespace co = herd::coordinator;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto file = herd::fuzz::scratch() / "journal.log";
  std::filesystem::remove(file);
  static const auto samples = std::make_shared<co::SyntheticSamples>(16, 4, 12, 7);
  co::JobSettings settings;
  settings.job_id = "job";
  settings.world_size = 2;
  settings.min_workers = 2;
  try {
    if (data[0] % 2 == 0) {
      herd::fuzz::as_file(data + 1, size - 1, "journal.log");
      co::Journal journal(file);
      (void)co::trained_samples(journal.records());
      return 0;
    }
    {
      co::Journal journal(file);
      for (size_t i = 1; i + 2 <= size;) {
        const uint32_t type = data[i] % 9;
        const size_t length = std::min<size_t>(data[i + 1], size - i - 2);
        journal.append(type, std::string(reinterpret_cast<const char*>(data + i + 2), length));
        i += 2 + length;
      }
    }
    (void)co::trained_samples(co::Journal(file).records());
    std::vector<size_t> train(samples->size());
    for (size_t i = 0; i < train.size(); ++i) train[i] = i;
    co::Job job(settings, samples, train, file, [] { return 0.0; });
    herd::v1::JobStatus status;
    job.GetStatus(&status);
  } catch (const co::JournalError&) {
  }
  return 0;
}
