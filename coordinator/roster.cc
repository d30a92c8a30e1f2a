#include "coordinator/roster.h"

#include <algorithm>
#include <charconv>

#include <fmt/format.h>

namespace herd::coordinator {

using grpc::Status;
using grpc::StatusCode;

Roster::Worker& Roster::add(const std::string& host, double now) {
  Worker w;
  w.seq = next_seq_++;
  w.id = fmt::format("w{}-{}", incarnation_, w.seq);
  w.host = host;
  w.last_heartbeat = now;
  w.registered_at = now;
  const std::string id = w.id;
  return workers_.emplace(id, std::move(w)).first->second;
}

Status Roster::find(const std::string& id, Worker** out) {
  if (id.empty()) return {StatusCode::INVALID_ARGUMENT, "worker_id is empty: call Register first"};
  auto it = workers_.find(id);
  if (it == workers_.end()) {
    uint64_t inc = 0;
    const bool ours = id.size() > 1 && id[0] == 'w' &&
                      std::from_chars(id.data() + 1, id.data() + id.size(), inc).ec == std::errc();
    if (ours && inc != incarnation_) {
      return {StatusCode::NOT_FOUND, fmt::format("worker {} was registered with an earlier run of this coordinator "
                                                 "(it restarted since): register again",
                                                 id)};
    }
    return {StatusCode::NOT_FOUND, fmt::format("unknown worker '{}': register first", id.substr(0, 64))};
  }
  if (!it->second.alive) {
    return {StatusCode::FAILED_PRECONDITION,
            fmt::format("worker {} was declared dead ({}): register again", id, it->second.death)};
  }
  *out = &it->second;
  return Status::OK;
}

size_t Roster::alive() const {
  return std::count_if(workers_.begin(), workers_.end(), [](const auto& kv) { return kv.second.alive; });
}

bool Roster::all_told() const {
  return std::all_of(workers_.begin(), workers_.end(), [](const auto& kv) { return !kv.second.alive || kv.second.told; });
}

std::vector<Roster::Worker*> Roster::alive_by_arrival() {
  std::vector<Worker*> out;
  for (auto& [id, w] : workers_) {
    if (w.alive) out.push_back(&w);
  }
  std::sort(out.begin(), out.end(), [](const Worker* a, const Worker* b) { return a->seq < b->seq; });
  return out;
}

std::vector<Roster::Worker*> Roster::overdue(double now, double timeout_s) {
  std::vector<Worker*> out;
  for (auto& [id, w] : workers_) {
    if (w.alive && now - w.last_heartbeat > timeout_s) out.push_back(&w);
  }
  return out;
}

void Roster::forget_dead(uint64_t attempt, double now) {
  std::erase_if(workers_, [&](const auto& kv) {
    return !kv.second.alive && kv.second.attempt != attempt && now - kv.second.last_heartbeat > 600;
  });
}

void Roster::seat(uint64_t attempt, uint32_t size, const std::vector<Worker*>& members, uint64_t resume_step) {
  gang_.clear();
  for (uint32_t r = 0; r < size; ++r) {
    Worker& w = *members[r];
    w.attempt = attempt;
    w.rank = r;
    w.reported = resume_step;
    gang_.push_back(w.id);
  }
}

}  // namespace herd::coordinator
