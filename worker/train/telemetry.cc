#include "worker/train/telemetry.h"

#include <algorithm>
#include <iostream>
#include <vector>

#include <fmt/format.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "worker/model/flops.h"

namespace herd::train {

using prometheus::Counter;
using prometheus::Family;
using prometheus::Gauge;
using prometheus::Histogram;

namespace {

Histogram::BucketBoundaries seconds_buckets(double smallest, int count) {  // 1-2.5-5 steps from `smallest`
  Histogram::BucketBoundaries b;
  for (double decade = smallest; static_cast<int>(b.size()) < count; decade *= 10) {
    for (double f : {1.0, 2.5, 5.0}) b.push_back(decade * f);
  }
  b.resize(static_cast<size_t>(count));
  return b;
}

}  // namespace

// The families and, for the current rank, their series.
struct WorkerMetrics::Series {
  explicit Series(prometheus::Registry& r)
      : tokens(prometheus::BuildCounter().Name("herd_tokens_total").Help("Tokens trained (padding excluded)").Register(r)),
        samples(prometheus::BuildCounter().Name("herd_samples_total").Help("Samples (rows) trained").Register(r)),
        steps(prometheus::BuildCounter().Name("herd_steps_total").Help("Optimizer steps taken").Register(r)),
        model_flops(prometheus::BuildCounter()
                        .Name("herd_model_flops_total")
                        .Help("Model FLOPs of the steps trained (docs/metrics.md: no recompute)")
                        .Register(r)),
        hardware_flops(prometheus::BuildCounter()
                           .Name("herd_hardware_flops_total")
                           .Help("Hardware FLOPs of the steps trained: model FLOPs plus activation recompute")
                           .Register(r)),
        loss(prometheus::BuildGauge().Name("herd_loss").Help("The last step's loss, every rank's tokens").Register(r)),
        eval_loss(prometheus::BuildGauge().Name("herd_eval_loss").Help("The last eval's loss").Register(r)),
        learning_rate(prometheus::BuildGauge().Name("herd_learning_rate").Help("The last step's learning rate").Register(r)),
        grad_norm(prometheus::BuildGauge().Name("herd_grad_norm").Help("The last step's gradient norm, before clipping").Register(r)),
        step(prometheus::BuildGauge().Name("herd_step").Help("The last step trained").Register(r)),
        epoch(prometheus::BuildGauge().Name("herd_epoch").Help("Epochs trained (fractional)").Register(r)),
        attempt(prometheus::BuildGauge().Name("herd_attempt").Help("The gang attempt this worker trains in").Register(r)),
        step_seconds(prometheus::BuildHistogram().Name("herd_step_seconds").Help("Wall time of a step, data wait included").Register(r)),
        data_wait(prometheus::BuildHistogram()
                      .Name("herd_data_wait_seconds")
                      .Help("Time a step waited for its micro-batches from the coordinator")
                      .Register(r)),
        collective(prometheus::BuildHistogram()
                       .Name("herd_collective_seconds")
                       .Help("Time a step waited on collective operations, by operation")
                       .Register(r)),
        checkpoint(prometheus::BuildHistogram().Name("herd_checkpoint_seconds").Help("Time to write and commit a checkpoint").Register(r)),
        memory(prometheus::BuildGauge().Name("herd_memory_bytes").Help("Memory in use, by kind").Register(r)),
        mfu(prometheus::BuildGauge().Name("herd_mfu_ratio").Help("The last step's model FLOPs over its time and the peak").Register(r)),
        peak(prometheus::BuildGauge().Name("herd_peak_flops").Help("The device's dense peak, FLOP/s").Register(r)) {}

  Family<Counter>& tokens;
  Family<Counter>& samples;
  Family<Counter>& steps;
  Family<Counter>& model_flops;
  Family<Counter>& hardware_flops;
  Family<Gauge>& loss;
  Family<Gauge>& eval_loss;
  Family<Gauge>& learning_rate;
  Family<Gauge>& grad_norm;
  Family<Gauge>& step;
  Family<Gauge>& epoch;
  Family<Gauge>& attempt;
  Family<Histogram>& step_seconds;
  Family<Histogram>& data_wait;
  Family<Histogram>& collective;
  Family<Histogram>& checkpoint;
  Family<Gauge>& memory;
  Family<Gauge>& mfu;
  Family<Gauge>& peak;

  std::string rank;  // the label of the series below; empty: none yet
  std::vector<std::pair<Family<Counter>*, Counter*>> counters;
  std::vector<std::pair<Family<Gauge>*, Gauge*>> gauges;
  std::vector<std::pair<Family<Histogram>*, Histogram*>> histograms;

  template <class T>
  static T& remember(std::vector<std::pair<Family<T>*, T*>>& made, Family<T>& f, T& m) {
    if (std::find(made.begin(), made.end(), std::pair{&f, &m}) == made.end()) made.emplace_back(&f, &m);
    return m;
  }
  Counter& counter(Family<Counter>& f, prometheus::Labels extra = {}) {
    extra["rank"] = rank;
    return remember(counters, f, f.Add(extra));
  }
  Gauge& gauge(Family<Gauge>& f, prometheus::Labels extra = {}) {
    extra["rank"] = rank;
    return remember(gauges, f, f.Add(extra));
  }
  Histogram& histogram(Family<Histogram>& f, const Histogram::BucketBoundaries& b, prometheus::Labels extra = {}) {
    extra["rank"] = rank;
    return remember(histograms, f, f.Add(extra, b));
  }
  // Series of a label the first call creates; later calls find them.
  void relabel(const std::string& r) {
    for (auto [f, m] : counters) f->Remove(m);
    for (auto [f, m] : gauges) f->Remove(m);
    for (auto [f, m] : histograms) f->Remove(m);
    counters.clear();
    gauges.clear();
    histograms.clear();
    rank = r;
  }
};

WorkerMetrics::WorkerMetrics(int port, std::optional<double> peak_flops)
    : registry_(std::make_shared<prometheus::Registry>()),
      series_(std::make_unique<Series>(*registry_)),
      peak_flops_(peak_flops) {
  const std::string listen = fmt::format("0.0.0.0:{}", port);
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(listen);
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("worker: cannot serve metrics on {} (metrics.worker_port, plus the local "
                                         "rank, in use?): {}",
                                         listen, e.what()));
  }
  exposer_->RegisterCollectable(registry_);
  std::cout << fmt::format("worker metrics on http://0.0.0.0:{}/metrics", this->port()) << std::endl;
}

WorkerMetrics::~WorkerMetrics() = default;

int WorkerMetrics::port() const {
  const auto ports = exposer_->GetListeningPorts();
  return ports.empty() ? 0 : ports.front();
}

void WorkerMetrics::attempt(uint64_t attempt, uint32_t rank) {
  attempt_ = attempt;
  Series& s = *series_;
  if (s.rank != std::to_string(rank)) {
    s.relabel(std::to_string(rank));
    if (peak_flops_) s.gauge(s.peak).Set(*peak_flops_);
  }
  s.gauge(s.attempt).Set(static_cast<double>(attempt));
}

void WorkerMetrics::step(const StepFigures& f) {
  Series& s = *series_;
  s.counter(s.tokens).Increment(static_cast<double>(f.tokens));
  s.counter(s.samples).Increment(static_cast<double>(f.samples));
  s.counter(s.steps).Increment();
  s.counter(s.model_flops).Increment(f.model_flops);
  s.counter(s.hardware_flops).Increment(f.hardware_flops);
  s.gauge(s.loss).Set(f.loss);
  s.gauge(s.learning_rate).Set(f.learning_rate);
  s.gauge(s.grad_norm).Set(f.grad_norm);
  s.gauge(s.step).Set(static_cast<double>(f.step));
  s.gauge(s.epoch).Set(f.epoch);
  s.histogram(s.step_seconds, seconds_buckets(0.01, 15)).Observe(f.seconds);
  s.histogram(s.data_wait, seconds_buckets(0.0001, 15)).Observe(f.data_wait_seconds);
  for (const auto& [op, seconds] : f.collective_seconds) {
    s.histogram(s.collective, seconds_buckets(0.0001, 15), {{"op", op}}).Observe(seconds);
  }
  for (const auto& [kind, bytes] : f.memory_bytes) s.gauge(s.memory, {{"kind", kind}}).Set(bytes);
  if (peak_flops_ && f.seconds > 0) s.gauge(s.mfu).Set(model::mfu(f.model_flops, f.seconds, *peak_flops_));
}

void WorkerMetrics::eval(double loss) { series_->gauge(series_->eval_loss).Set(loss); }

void WorkerMetrics::checkpoint(double seconds) {
  series_->histogram(series_->checkpoint, seconds_buckets(0.01, 15)).Observe(seconds);
}

}  // namespace herd::train
