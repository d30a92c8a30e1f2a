// A worker's Prometheus exporter (docs/metrics.md has the catalogue): what each step
// trained and cost, evals, checkpoints, memory and, where the device's peak is
// known, MFU. Every series carries the worker's rank in its current gang; a worker
// that gets another rank in a later attempt starts new series.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "client/gang_loop.h"

namespace prometheus {
class Exposer;
class Registry;
}  // namespace prometheus

namespace herd::train {

class WorkerMetrics {
 public:
  // Serves /metrics on 0.0.0.0:`port` (0: a free port), or on the next free one of
  // the kPortsTried after it (workers of one host that were given one port, such as
  // a Kubernetes Indexed Job's pods on the host network); where none is free it says
  // so once and serves nothing: a worker trains on without its endpoint.
  // `peak_flops` (FLOP/s of the device; none: no MFU series).
  static constexpr int kPortsTried = 64;
  WorkerMetrics(int port, std::optional<double> peak_flops);
  ~WorkerMetrics();
  int port() const;  // 0: not served

  void attempt(uint64_t attempt, uint32_t rank);
  void step(const client::StepRecord& r);  // this rank's figures of it
  void eval(double loss);
  void checkpoint(double seconds);

 private:
  struct Series;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::unique_ptr<Series> series_;
  const std::optional<double> peak_flops_;
};

}  // namespace herd::train
