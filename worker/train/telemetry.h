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

namespace prometheus {
class Exposer;
class Registry;
}  // namespace prometheus

namespace herd::train {

struct StepFigures {
  uint64_t step = 0;
  double epoch = 0;
  double loss = 0, learning_rate = 0, grad_norm = 0;
  uint64_t tokens = 0, samples = 0;  // this rank's
  double model_flops = 0, hardware_flops = 0;  // this rank's (worker/model/flops.h)
  double seconds = 0, data_wait_seconds = 0;
  std::map<std::string, double> collective_seconds;  // by operation
  std::map<std::string, double> memory_bytes;        // by kind: rss, gpu_allocated, gpu_reserved, gpu_peak
};

class WorkerMetrics {
 public:
  // Serves /metrics on 0.0.0.0:`port` (0: a free port); `peak_flops` (FLOP/s of
  // the device; none: no MFU series).
  WorkerMetrics(int port, std::optional<double> peak_flops);
  ~WorkerMetrics();
  int port() const;

  void attempt(uint64_t attempt, uint32_t rank);
  void step(const StepFigures& f);
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
