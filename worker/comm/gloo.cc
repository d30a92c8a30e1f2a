// The Gloo backend: Debian's libgloo behind the module libherd_gloo.so
// (worker/comm/gloo_module.cc, gloo_api.h), one comm thread per group.
#include <dlfcn.h>
#include <unistd.h>

#include <condition_variable>
#include <csignal>
#include <deque>
#include <filesystem>
#include <future>
#include <mutex>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "worker/comm/backends.h"
#include "worker/comm/gloo_api.h"

namespace herd::comm {

namespace {

void check_contiguous(const torch::Tensor& t, const char* op) {
  if (!t.defined() || !t.is_contiguous()) {
    throw std::invalid_argument(fmt::format("{}: the Gloo backend takes contiguous tensors", op));
  }
}

// Gloo moves host memory. A GPU tensor goes through a host copy, as PyTorch's Gloo
// backend stages CUDA tensors: `work` ran on `host`; once it is done, its result is
// copied into `device`.
Work copied_back(Work work, torch::Tensor device, torch::Tensor host) {
  return Work([work = std::move(work), device, host]() mutable {
    work.wait();
    device.copy_(host);
  });
}

gloo_api::DType reduce_dtype(const torch::Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case torch::kFloat32: return gloo_api::DType::kFloat32;
    case torch::kFloat64: return gloo_api::DType::kFloat64;
    case torch::kInt64: return gloo_api::DType::kInt64;
    default: throw std::invalid_argument(fmt::format("{}: sums float32, float64 or int64 tensors", op));
  }
}
// dlopen with RTLD_DEEPBIND. The sanitizers' dlopen refuses that flag, because a
// library's own dependencies would then come before their interceptors (malloc,
// pthread_*) for its references. The Gloo module's and its libgloo's dependencies
// are only each other (worker/comm/CMakeLists.txt;
// Collective.TheGlooModulesOwnScopeHoldsGlooAlone checks), so every other reference
// still binds in the process's scope, to the interceptors: a sanitizer build opens
// it with libc's dlopen, past the check.
void* open_deepbind(const char* path) {
  constexpr int flags = RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND;
#ifdef HERD_SANITIZED
  using DlopenFn = void* (*)(const char*, int);
  static const auto libc_dlopen = reinterpret_cast<DlopenFn>(::dlsym(RTLD_NEXT, "dlopen"));
  if (libc_dlopen == nullptr) throw CommError(fmt::format("libc's dlopen was not found: {}", ::dlerror()));
  return libc_dlopen(path, flags);
#else
  return ::dlopen(path, flags);
#endif
}

// Finds and opens libherd_gloo.so once: $HERD_GLOO_MODULE, else next to the
// executable's lib/ (build/bin/herd -> build/lib), else the executable's directory.
// libgloo's own dependencies are loaded first, into the whole process: the module's
// copy of libgloo lists none (worker/comm/CMakeLists.txt says why).
gloo_api::ConnectFn gloo_module() {
  static gloo_api::ConnectFn connect = [] {
    for (const char* needed : {HERD_GLOO_NEEDED}) {
      if (!::dlopen(needed, RTLD_NOW | RTLD_GLOBAL)) {
        throw CommError(fmt::format("loading {}, which Gloo needs: {}", needed, ::dlerror()));
      }
    }
    std::vector<std::filesystem::path> candidates;
    if (const char* env = std::getenv("HERD_GLOO_MODULE")) candidates.emplace_back(env);
    std::error_code ec;
    const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (!ec) {
      candidates.push_back(exe.parent_path().parent_path() / "lib" / "libherd_gloo.so");
      candidates.push_back(exe.parent_path() / "libherd_gloo.so");
    }
    std::vector<std::string> tried;
    for (const auto& path : candidates) {
      if (!std::filesystem::exists(path)) {
        tried.push_back(path.string());
        continue;
      }
      void* handle = open_deepbind(path.c_str());
      if (!handle) throw CommError(fmt::format("loading {}: {}", path.string(), ::dlerror()));
      auto* fn = reinterpret_cast<gloo_api::ConnectFn>(::dlsym(handle, gloo_api::kConnectSymbol));
      if (!fn) throw CommError(fmt::format("{} has no {}", path.string(), gloo_api::kConnectSymbol));
      return fn;
    }
    throw CommError(fmt::format("the Gloo backend's module libherd_gloo.so was not found (tried {}); set "
                                "HERD_GLOO_MODULE to its path",
                                fmt::join(tried, ", ")));
  }();
  return connect;
}

class StoreKeyValue : public gloo_api::KeyValue {
 public:
  explicit StoreKeyValue(Store& store) : store_(store) {}
  void set(const std::string& key, const std::vector<char>& value) override {
    store_.set("gloo/" + key, std::string(value.begin(), value.end()));
  }
  std::vector<char> get(const std::string& key, std::chrono::milliseconds timeout) override {
    const auto v = store_.get("gloo/" + key, timeout);
    return {v.begin(), v.end()};
  }

 private:
  Store& store_;
};

// Runs operations one at a time, in the order they were issued, on its own thread.
class GlooCollective : public Collective {
 public:
  GlooCollective(std::unique_ptr<gloo_api::Group> group, const CollectiveOptions& options)
      : group_(std::move(group)), options_(options), thread_([this] { run(); }) {}
  ~GlooCollective() override {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    ready_.notify_all();
    thread_.join();
  }

  int rank() const override { return options_.rank; }
  int size() const override { return options_.size; }
  std::string backend() const override { return "gloo"; }

  Work all_gather(torch::Tensor out, torch::Tensor in) override {
    check_contiguous(out, "all_gather");
    check_contiguous(in, "all_gather");
    if (out.numel() != in.numel() * size() || out.scalar_type() != in.scalar_type()) {
      throw std::invalid_argument(fmt::format("all_gather: output of {} elements for {} ranks of {}", out.numel(),
                                              size(), in.numel()));
    }
    if (!out.is_cpu() || !in.is_cpu()) {
      auto host = torch::empty_like(out, out.options().device(torch::kCPU));
      return copied_back(all_gather(host, in.cpu()), out, host);
    }
    return enqueue("all_gather", [this, out, in] { group_->all_gather(in.data_ptr(), out.data_ptr(), in.nbytes()); });
  }
  Work reduce_scatter(torch::Tensor out, torch::Tensor in) override {
    check_contiguous(out, "reduce_scatter");
    check_contiguous(in, "reduce_scatter");
    const auto dtype = reduce_dtype(in, "reduce_scatter");
    if (in.numel() != out.numel() * size() || out.scalar_type() != in.scalar_type()) {
      throw std::invalid_argument("reduce_scatter: input must hold size() chunks of the output's shape and dtype");
    }
    if (!out.is_cpu() || !in.is_cpu()) {
      auto host = torch::empty_like(out, out.options().device(torch::kCPU));
      return copied_back(reduce_scatter(host, in.cpu()), out, host);
    }
    return enqueue("reduce_scatter", [this, out, in, dtype] {
      group_->reduce_scatter_sum(in.data_ptr(), out.data_ptr(), static_cast<size_t>(out.numel()), dtype);
    });
  }
  Work all_reduce(torch::Tensor t) override {
    check_contiguous(t, "all_reduce");
    const auto dtype = reduce_dtype(t, "all_reduce");
    if (!t.is_cpu()) {
      auto host = t.cpu();
      return copied_back(all_reduce(host), t, host);
    }
    return enqueue("all_reduce",
                   [this, t, dtype] { group_->all_reduce_sum(t.data_ptr(), static_cast<size_t>(t.numel()), dtype); });
  }
  Work broadcast(torch::Tensor t, int root) override {
    check_contiguous(t, "broadcast");
    if (!t.is_cpu()) {
      auto host = t.cpu();
      return copied_back(broadcast(host, root), t, host);
    }
    return enqueue("broadcast", [this, t, root] { group_->broadcast(t.data_ptr(), t.nbytes(), root); });
  }
  void barrier() override { enqueue("barrier", [this] { group_->barrier(); }).wait(); }

 private:
  struct Task {
    std::string what;
    std::function<void()> run;
    std::shared_ptr<std::promise<void>> done;
  };

  Work enqueue(const char* op, std::function<void()> fn) {
    Task task{fmt::format("{} on rank {} of {} (attempt {})", op, rank(), size(), options_.attempt), std::move(fn),
              std::make_shared<std::promise<void>>()};
    // Waiting allows for the operations queued ahead of this one.
    Work work([done = task.done->get_future().share(), what = task.what, timeout = options_.timeout * 2] {
      if (done.wait_for(timeout) != std::future_status::ready) {
        throw CommError(fmt::format("{} did not finish within {} s", what, timeout.count() / 1000.0));
      }
      done.get();
    });
    {
      std::lock_guard lock(mutex_);
      queue_.push_back(std::move(task));
    }
    ready_.notify_one();
    return work;
  }

  void run() {
    for (;;) {
      Task task;
      {
        std::unique_lock lock(mutex_);
        ready_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      if (!broken_.empty()) {
        task.done->set_exception(std::make_exception_ptr(
            CommError(fmt::format("{} failed: the group broke earlier: {}", task.what, broken_))));
        continue;
      }
      try {
        task.run();
        task.done->set_value();
      } catch (const std::exception& e) {
        broken_ = fmt::format("{} failed: {}", task.what, e.what());
        task.done->set_exception(std::make_exception_ptr(CommError(broken_)));
      }
    }
  }

  std::unique_ptr<gloo_api::Group> group_;
  const CollectiveOptions options_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Task> queue_;
  bool stop_ = false;
  std::string broken_;  // the comm thread's alone
  std::thread thread_;
};
}  // namespace

std::unique_ptr<Collective> connect_gloo(Store& store, const CollectiveOptions& options) {
  // Gloo writes to sockets a peer may have closed: SIGPIPE would end this process
  // before the error could be reported and the gang re-formed.
  static std::once_flag no_sigpipe;
  std::call_once(no_sigpipe, [] { std::signal(SIGPIPE, SIG_IGN); });
  StoreKeyValue kv(store);
  gloo_api::GroupOptions group;
  group.rank = options.rank;
  group.size = options.size;
  group.hostname = options.hostname;
  group.iface = options.iface;
  group.timeout = options.timeout;
  try {
    std::unique_ptr<gloo_api::Group> connected(gloo_module()(kv, group));
    return std::make_unique<GlooCollective>(std::move(connected), options);
  } catch (const CommError&) {
    throw;
  } catch (const std::exception& e) {
    throw CommError(fmt::format("rank {} of {} (attempt {}): {}", options.rank, options.size, options.attempt,
                                e.what()));
  }
}

}  // namespace herd::comm
