// The coordinator's request handlers against a live Job (two registered workers, a
// journal, a fake clock): the input is a sequence of calls, each a method byte, a
// length byte and that many bytes parsed as the method's request. A worker_id of
// one byte names one of the registered workers, so that the fuzzer gets past
// NOT_FOUND. Waits are cut to nothing. Every call answers a status; none crashes or
// throws, and after each a checkpoint is never past the last committed step nor
// that past the job's last step.
#include <filesystem>

#include <google/protobuf/stubs/logging.h>

#include "coordinator/job.h"
#include "tests/fuzz/fuzz_input.h"

namespace co = herd::coordinator;
namespace v1 = herd::v1;

namespace {

template <class Request>
bool parse(Request* r, const uint8_t* data, size_t size, const std::vector<std::string>& ids) {
  if (!r->ParseFromArray(data, static_cast<int>(size))) return false;
  if constexpr (requires { r->worker_id(); }) {
    if (r->worker_id().size() <= 1 && !ids.empty()) {
      r->set_worker_id(ids[r->worker_id().empty() ? 0 : static_cast<uint8_t>(r->worker_id()[0]) % ids.size()]);
    }
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);  // parse errors of invalid UTF-8 are answers, not news
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto journal = herd::fuzz::scratch() / "handlers.journal";
  std::filesystem::remove(journal);
  static const auto samples = std::make_shared<co::SyntheticSamples>(16, 4, 12, 7);
  co::JobSettings settings;
  settings.job_id = "job";
  settings.world_size = 2;
  settings.min_workers = 1;
  settings.batch_size = 1;
  settings.gradient_accumulation_steps = 2;
  settings.heartbeat_timeout_s = 5;
  settings.replacement_timeout_s = 10;
  settings.checkpoint_root = "/job/trainer";
  settings.shared = {{"lora.r", "8"}};
  std::vector<size_t> train(samples->size());
  for (size_t i = 0; i < train.size(); ++i) train[i] = i;
  double now = 0;
  co::Job job(settings, samples, train, journal, [&now] { return now; });
  std::vector<std::string> ids;
  for (int i = 0; i < 2; ++i) {
    v1::RegisterRequest q;
    q.set_job_id("job");
    q.set_host("h");
    v1::RegisterResponse r;
    if (job.Register(q, &r).ok()) ids.push_back(r.worker_id());
  }
  const auto never = [] { return true; };
  for (size_t i = 0; i + 2 <= size;) {
    const uint8_t method = data[i] % 16;
    const size_t length = std::min<size_t>(data[i + 1], size - i - 2);
    const uint8_t* body = data + i + 2;
    i += 2 + length;
    try {
      switch (method) {
        case 0: {
          v1::RegisterRequest q;
          v1::RegisterResponse r;
          if (parse(&q, body, length, ids) && job.Register(q, &r).ok()) ids.push_back(r.worker_id());
          break;
        }
        case 1: {
          v1::HeartbeatRequest q;
          v1::HeartbeatResponse r;
          if (parse(&q, body, length, ids)) job.Heartbeat(q, &r);
          break;
        }
        case 2: {
          v1::WaitForGangRequest q;
          v1::WaitForGangResponse r;
          if (parse(&q, body, length, ids)) {
            q.set_timeout_seconds(0);
            job.WaitForGang(q, &r, never);
          }
          break;
        }
        case 3: {
          v1::KvSetRequest q;
          if (parse(&q, body, length, ids)) job.KvSet(q);
          break;
        }
        case 4: {
          v1::KvGetRequest q;
          v1::KvGetResponse r;
          if (parse(&q, body, length, ids)) job.KvGet(q, &r);
          break;
        }
        case 5: {
          v1::KvWaitRequest q;
          if (parse(&q, body, length, ids)) {
            q.set_timeout_ms(0);
            job.KvWait(q, never);
          }
          break;
        }
        case 6: {
          v1::KvAddRequest q;
          v1::KvAddResponse r;
          if (parse(&q, body, length, ids)) job.KvAdd(q, &r);
          break;
        }
        case 7: {
          v1::StreamBatchesRequest q;
          if (parse(&q, body, length, ids) && job.OpenStream(q).ok()) {
            for (uint64_t step = q.from_step(); step < q.from_step() + 3; ++step) {
              if (job.NextStep(q, step).end) break;
            }
            if (length % 2) job.StreamLost(q, "fuzz");
          }
          break;
        }
        case 8: {
          v1::EvalBatchesRequest q;
          std::vector<v1::MicroBatch> out;
          if (parse(&q, body, length, ids)) job.EvalBatches(q, &out);
          break;
        }
        case 9: {
          v1::ReportFailureRequest q;
          if (parse(&q, body, length, ids)) job.ReportFailure(q);
          break;
        }
        case 10: {
          v1::ReportStepRequest q;
          v1::ReportStepResponse r;
          if (parse(&q, body, length, ids)) job.ReportStep(q, &r);
          break;
        }
        case 11: {
          v1::CommitCheckpointRequest q;
          v1::CommitCheckpointResponse r;
          if (parse(&q, body, length, ids)) job.CommitCheckpoint(q, &r);
          break;
        }
        case 12: {
          v1::OperatorResponse r;
          job.Drain(&r);
          break;
        }
        case 13: {
          v1::CancelRequest q;
          v1::OperatorResponse r;
          if (parse(&q, body, length, ids)) job.Cancel(q, &r);
          break;
        }
        default:  // time passes
          now += length;
          job.tick();
          break;
      }
    } catch (const co::JournalError&) {  // the scratch disk: not the handlers' doing
      return 0;
    }
    v1::JobStatus status;
    job.GetStatus(&status);
    if (status.checkpoint_step() > status.committed_step() || status.committed_step() > status.total_steps()) {
      __builtin_trap();
    }
  }
  return 0;
}
