#include "worker/comm/timed.h"

#include <chrono>

namespace herd::comm {

namespace {
double since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}
}  // namespace

Work Timed::timed(const char* op, Work work) {
  return Work([this, op, work = std::move(work)] {
    const auto start = std::chrono::steady_clock::now();
    work.wait();
    add(op, since(start));
  });
}

void Timed::barrier() {
  const auto start = std::chrono::steady_clock::now();
  inner_->barrier();
  add("barrier", since(start));
}

void Timed::add(const char* op, double seconds) {
  std::lock_guard lock(mutex_);
  waited_[op] += seconds;
}

std::map<std::string, double> Timed::take() {
  std::lock_guard lock(mutex_);
  return std::exchange(waited_, {});
}

}  // namespace herd::comm
