// The workers a coordinator knows: who registered, who is alive, and which of them
// hold the ranks of the current gang. Plain data: the Job holds its lock around it
// and decides when a gang forms and what a death means for the job.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include <grpcpp/support/status.h>

namespace herd::coordinator {

class Roster {
 public:
  struct Worker {
    std::string id, host;
    uint64_t seq = 0;  // registration order: ranks go to the earliest
    bool alive = true;
    std::string death;
    double last_heartbeat = 0;
    double registered_at = 0;
    uint64_t attempt = 0;  // the attempt it holds a rank in (0: none)
    uint32_t rank = 0;
    uint64_t reported = 0;  // last step it reported in that attempt
    double tokens_per_second = 0;
    bool told = false;  // knows the job has ended
  };

  // Worker ids carry the coordinator's incarnation ("w{incarnation}-{seq}"), so a
  // worker of an earlier run of the coordinator is told to register again.
  explicit Roster(uint64_t incarnation = 0) : incarnation_(incarnation) {}
  void set_incarnation(uint64_t incarnation) { incarnation_ = incarnation; }

  Worker& add(const std::string& host, double now);
  // The live worker `id`, or the status that explains why there is none.
  grpc::Status find(const std::string& id, Worker** out);
  size_t alive() const;
  // Whether every live worker knows the job has ended.
  bool all_told() const;
  // The live workers, earliest registered first.
  std::vector<Worker*> alive_by_arrival();
  // Live workers silent for longer than `timeout_s`.
  std::vector<Worker*> overdue(double now, double timeout_s);
  // Drops the dead that hold no rank in `attempt` and were silent for 10 minutes.
  void forget_dead(uint64_t attempt, double now);

  // Seats the first `size` of `members` as ranks 0.. of `attempt`, each having
  // reported up to `resume_step`.
  void seat(uint64_t attempt, uint32_t size, const std::vector<Worker*>& members, uint64_t resume_step);
  const std::vector<std::string>& gang() const { return gang_; }  // worker ids by rank
  const Worker& at(const std::string& id) const { return workers_.at(id); }

 private:
  uint64_t incarnation_;
  uint64_t next_seq_ = 0;
  std::unordered_map<std::string, Worker> workers_;
  std::vector<std::string> gang_;
};

}  // namespace herd::coordinator
