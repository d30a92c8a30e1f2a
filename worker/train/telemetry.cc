#include "worker/train/telemetry.h"

#include <functional>
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

  // The series of the current rank, made once per rank; those with a second label
  // (an operation, a kind of memory) as they first appear.
  std::string rank;  // empty: none yet
  Counter *tokens_of = nullptr, *samples_of = nullptr, *steps_of = nullptr, *model_flops_of = nullptr,
          *hardware_flops_of = nullptr;
  Gauge *loss_of = nullptr, *eval_loss_of = nullptr, *learning_rate_of = nullptr, *grad_norm_of = nullptr,
        *step_of = nullptr, *epoch_of = nullptr, *attempt_of = nullptr, *mfu_of = nullptr;
  Histogram *step_seconds_of = nullptr, *data_wait_of = nullptr, *checkpoint_of = nullptr;
  std::map<std::string, Histogram*> collective_of;
  std::map<std::string, Gauge*> memory_of;
  std::vector<std::function<void()>> remove;  // of every series made for `rank`

  template <class T, class... Args>
  T* make(Family<T>& f, prometheus::Labels labels, Args&&... args) {
    labels["rank"] = rank;
    T& m = f.Add(labels, std::forward<Args>(args)...);
    remove.emplace_back([&f, &m] { f.Remove(&m); });
    return &m;
  }

  void set_rank(const std::string& r) {
    for (auto& f : remove) f();
    remove.clear();
    collective_of.clear();
    memory_of.clear();
    rank = r;
    tokens_of = make(tokens, {});
    samples_of = make(samples, {});
    steps_of = make(steps, {});
    model_flops_of = make(model_flops, {});
    hardware_flops_of = make(hardware_flops, {});
    loss_of = make(loss, {});
    learning_rate_of = make(learning_rate, {});
    grad_norm_of = make(grad_norm, {});
    step_of = make(step, {});
    epoch_of = make(epoch, {});
    attempt_of = make(attempt, {});
    step_seconds_of = make(step_seconds, {}, seconds_buckets(0.01, 15));
    data_wait_of = make(data_wait, {}, seconds_buckets(0.0001, 15));
    eval_loss_of = nullptr;  // once there is an eval
    checkpoint_of = nullptr;  // once there is a checkpoint
    mfu_of = nullptr;         // where the peak is known
  }
};

WorkerMetrics::WorkerMetrics(int port, std::optional<double> peak_flops)
    : registry_(std::make_shared<prometheus::Registry>()),
      series_(std::make_unique<Series>(*registry_)),
      peak_flops_(peak_flops) {
  const int last = port == 0 ? 0 : std::min(port + kPortsTried - 1, 65535);  // 0: the kernel picks one
  std::string first_error;
  for (int p = port; p <= last && !exposer_; ++p) {
    try {
      exposer_ = std::make_unique<prometheus::Exposer>(fmt::format("0.0.0.0:{}", p));
    } catch (const std::exception& e) {
      if (first_error.empty()) first_error = e.what();
    }
  }
  if (!exposer_) {
    std::cout << fmt::format(
                     "worker: cannot serve metrics on ports {}..{} (metrics.worker_port plus the local rank, "
                     "and the {} after it: {}); this worker trains on without its /metrics endpoint",
                     port, last, kPortsTried - 1, first_error)
              << std::endl;
    return;
  }
  exposer_->RegisterCollectable(registry_);
  const int served = this->port();
  std::cout << fmt::format("worker metrics on http://0.0.0.0:{}/metrics{}", served,
                           port != 0 && served != port ? fmt::format(" ({} is in use)", port) : "")
            << std::endl;
}

WorkerMetrics::~WorkerMetrics() = default;

int WorkerMetrics::port() const {
  const auto ports = exposer_ ? exposer_->GetListeningPorts() : std::vector<int>{};
  return ports.empty() ? 0 : ports.front();
}

void WorkerMetrics::attempt(uint64_t attempt, uint32_t rank) {
  Series& s = *series_;
  if (s.rank != std::to_string(rank)) {
    s.set_rank(std::to_string(rank));
    if (peak_flops_) {
      s.make(s.peak, {})->Set(*peak_flops_);
      s.mfu_of = s.make(s.mfu, {});
    }
  }
  s.attempt_of->Set(static_cast<double>(attempt));
}

void WorkerMetrics::step(const client::StepRecord& f) {
  Series& s = *series_;
  s.tokens_of->Increment(static_cast<double>(f.rank_tokens));
  s.samples_of->Increment(static_cast<double>(f.rank_samples));
  s.steps_of->Increment();
  s.model_flops_of->Increment(f.rank_model_flops);
  s.hardware_flops_of->Increment(f.rank_hardware_flops);
  s.loss_of->Set(f.loss);
  s.learning_rate_of->Set(f.learning_rate);
  s.grad_norm_of->Set(f.grad_norm);
  s.step_of->Set(static_cast<double>(f.step));
  s.epoch_of->Set(f.epoch);
  s.step_seconds_of->Observe(f.seconds);
  s.data_wait_of->Observe(f.data_wait_seconds);
  for (const auto& [op, seconds] : f.collective_seconds) {
    auto& h = s.collective_of[op];
    if (!h) h = s.make(s.collective, {{"op", op}}, seconds_buckets(0.0001, 15));
    h->Observe(seconds);
  }
  for (const auto& [kind, bytes] : f.memory_bytes) {
    auto& g = s.memory_of[kind];
    if (!g) g = s.make(s.memory, {{"kind", kind}});
    g->Set(bytes);
  }
  if (s.mfu_of && f.seconds > 0) s.mfu_of->Set(model::mfu(f.rank_model_flops, f.seconds, *peak_flops_));
}

void WorkerMetrics::eval(double loss) {
  Series& s = *series_;
  if (!s.eval_loss_of) s.eval_loss_of = s.make(s.eval_loss, {});
  s.eval_loss_of->Set(loss);
}

void WorkerMetrics::checkpoint(double seconds) {
  Series& s = *series_;
  if (!s.checkpoint_of) s.checkpoint_of = s.make(s.checkpoint, {}, seconds_buckets(0.01, 15));
  s.checkpoint_of->Observe(seconds);
}

}  // namespace herd::train
