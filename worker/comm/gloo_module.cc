// libherd_gloo.so: herd's collectives on Debian's libgloo (TCP transport). Loaded
// with RTLD_DEEPBIND by gloo.cc; see gloo_api.h for why it is a separate module
// and worker/comm/CMakeLists.txt for how it is linked.
#include <cstring>
#include <memory>
#include <stdexcept>

#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/alltoall.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>

#include "worker/comm/gloo_api.h"

namespace herd::comm::gloo_api {
namespace {

class StoreAdapter : public ::gloo::rendezvous::Store {
 public:
  StoreAdapter(KeyValue& kv, std::chrono::milliseconds timeout) : kv_(kv), timeout_(timeout) {}
  void set(const std::string& key, const std::vector<char>& data) override { kv_.set(key, data); }
  std::vector<char> get(const std::string& key) override { return kv_.get(key, timeout_); }
  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override {
    for (const auto& k : keys) kv_.get(k, timeout);
  }

 private:
  KeyValue& kv_;
  std::chrono::milliseconds timeout_;
};

template <class T>
void add(void* c, const void* a, const void* b, size_t n) {
  ::gloo::sum<T>(c, a, b, n);
}

size_t element_size(DType d) { return d == DType::kFloat32 ? 4 : 8; }

template <class F>
void run(const char* op, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string(op) + ": " + e.what());
  }
}

class GlooGroup : public Group {
 public:
  explicit GlooGroup(std::shared_ptr<::gloo::Context> context) : context_(std::move(context)) {}

  void all_gather(const void* in, void* out, size_t bytes) override {
    run("all_gather", [&] {
      ::gloo::AllgatherOptions opts(context_);
      opts.setInput(const_cast<uint8_t*>(static_cast<const uint8_t*>(in)), bytes);
      opts.setOutput(static_cast<uint8_t*>(out), bytes * static_cast<size_t>(context_->size));
      ::gloo::allgather(opts);
    });
  }

  void all_reduce_sum(void* data, size_t count, DType dtype) override {
    run("all_reduce", [&] {
      ::gloo::AllreduceOptions opts(context_);
      switch (dtype) {
        case DType::kFloat32:
          opts.setOutput(static_cast<float*>(data), count);
          opts.setReduceFunction(&add<float>);
          break;
        case DType::kFloat64:
          opts.setOutput(static_cast<double*>(data), count);
          opts.setReduceFunction(&add<double>);
          break;
        case DType::kInt64:
          opts.setOutput(static_cast<int64_t*>(data), count);
          opts.setReduceFunction(&add<int64_t>);
          break;
      }
      ::gloo::allreduce(opts);
    });
  }

  // All-to-all then a local sum: each rank sends and receives (size-1)/size of the
  // data, as a ring reduce-scatter does.
  void reduce_scatter_sum(const void* in, void* out, size_t count, DType dtype) override {
    run("reduce_scatter", [&] {
      const size_t n = static_cast<size_t>(context_->size), bytes = count * element_size(dtype);
      std::vector<uint8_t> chunks(bytes * n);
      ::gloo::AlltoallOptions opts(context_);
      opts.setInput(const_cast<uint8_t*>(static_cast<const uint8_t*>(in)), bytes * n);
      opts.setOutput(chunks.data(), bytes * n);
      ::gloo::alltoall(opts);
      std::memcpy(out, chunks.data(), bytes);
      for (size_t r = 1; r < n; ++r) {
        const void* chunk = chunks.data() + r * bytes;
        switch (dtype) {
          case DType::kFloat32: add<float>(out, out, chunk, count); break;
          case DType::kFloat64: add<double>(out, out, chunk, count); break;
          case DType::kInt64: add<int64_t>(out, out, chunk, count); break;
        }
      }
    });
  }

  void broadcast(void* data, size_t bytes, int root) override {
    run("broadcast", [&] {
      ::gloo::BroadcastOptions opts(context_);
      opts.setOutput(static_cast<uint8_t*>(data), bytes);
      opts.setRoot(root);
      ::gloo::broadcast(opts);
    });
  }

  void barrier() override {
    run("barrier", [&] {
      ::gloo::BarrierOptions opts(context_);
      ::gloo::barrier(opts);
    });
  }

 private:
  std::shared_ptr<::gloo::Context> context_;
};

}  // namespace
}  // namespace herd::comm::gloo_api

extern "C" __attribute__((visibility("default"))) herd::comm::gloo_api::Group* herd_gloo_connect(
    herd::comm::gloo_api::KeyValue& store, const herd::comm::gloo_api::GroupOptions& options) {
  using namespace herd::comm::gloo_api;
  try {
    ::gloo::transport::tcp::attr attr;
    attr.hostname = options.hostname;
    attr.iface = options.iface;
    auto device = ::gloo::transport::tcp::CreateDevice(attr);
    auto context = std::make_shared<::gloo::rendezvous::Context>(options.rank, options.size);
    context->setTimeout(options.timeout);
    StoreAdapter adapter(store, options.timeout);
    context->connectFullMesh(adapter, device);
    return new GlooGroup(std::move(context));
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string("connecting the Gloo group: ") + e.what());
  }
}
