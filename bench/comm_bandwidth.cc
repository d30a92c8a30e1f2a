// Gloo all_gather and all_reduce over loopback TCP: ranks are threads of this
// process, each with its own Gloo context and sockets. Prints the bus bandwidth
// (nccl-tests' convention: all_gather algbw x (n-1)/n, all_reduce algbw x 2(n-1)/n)
// for messages of 1 MB to 256 MB, beside a memcpy of the same bytes in this
// process as the baseline.
//   herd_bench_comm_bandwidth [--ranks 2] [--max-mb 256]
#include <algorithm>
#include <chrono>
#include <functional>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "worker/comm/collective.h"

using namespace herd::comm;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// The median over `reps` of fn()'s time on rank 0 (every rank runs it).
double time_op(std::vector<std::unique_ptr<Collective>>& ranks, int reps,
               const std::function<void(Collective&)>& fn) {
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    std::vector<std::thread> threads;
    double rank0 = 0;
    for (auto& c : ranks) {
      threads.emplace_back([&, c = c.get()] {
        c->barrier();
        const auto t = std::chrono::steady_clock::now();
        fn(*c);
        if (c->rank() == 0) rank0 = seconds_since(t);
      });
    }
    for (auto& t : threads) t.join();
    times.push_back(rank0);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int n = 2, max_mb = 256;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--ranks") n = std::stoi(argv[i + 1]);
    if (std::string(argv[i]) == "--max-mb") max_mb = std::stoi(argv[i + 1]);
  }
  torch::set_num_threads(1);
  InMemoryStore store;
  std::vector<std::unique_ptr<Collective>> ranks(static_cast<size_t>(n));
  {
    std::vector<std::thread> threads;
    for (int r = 0; r < n; ++r) {
      threads.emplace_back([&, r] {
        CollectiveOptions o;
        o.rank = r;
        o.size = n;
        o.hostname = "127.0.0.1";
        ranks[static_cast<size_t>(r)] = connect("gloo", store, o);
      });
    }
    for (auto& t : threads) t.join();
  }
  std::printf("Gloo over loopback, %d ranks (threads of one process), median of 5\n", n);
  std::printf("%8s  %14s  %14s  %14s  %10s  %10s\n", "MB", "memcpy GB/s", "all_gather bus", "all_reduce bus",
              "ag/memcpy", "ar/memcpy");
  for (int mb = 1; mb <= max_mb; mb *= 4) {
    const int64_t bytes = int64_t{mb} << 20;
    // all_gather: each rank contributes bytes / n, receives bytes.
    std::vector<torch::Tensor> in, out, sum;
    for (int r = 0; r < n; ++r) {
      in.push_back(torch::ones({bytes / n}, torch::kUInt8));
      out.push_back(torch::empty({bytes}, torch::kUInt8));
      sum.push_back(torch::ones({bytes / 4}, torch::kFloat32));
    }
    auto src = torch::ones({bytes}, torch::kUInt8), dst = torch::empty({bytes}, torch::kUInt8);
    std::vector<double> copies;
    for (int i = 0; i < 5; ++i) {
      const auto t = std::chrono::steady_clock::now();
      std::memcpy(dst.data_ptr(), src.data_ptr(), static_cast<size_t>(bytes));
      copies.push_back(seconds_since(t));
    }
    std::sort(copies.begin(), copies.end());
    const double copy_gbs = static_cast<double>(bytes) / copies[2] / 1e9;
    const double ag = time_op(ranks, 5, [&](Collective& c) {
      c.all_gather(out[static_cast<size_t>(c.rank())], in[static_cast<size_t>(c.rank())]).wait();
    });
    const double ar = time_op(ranks, 5, [&](Collective& c) { c.all_reduce(sum[static_cast<size_t>(c.rank())]).wait(); });
    const double ag_bus = static_cast<double>(bytes) / ag / 1e9 * (n - 1) / n;
    const double ar_bus = static_cast<double>(bytes) / ar / 1e9 * 2 * (n - 1) / n;
    std::printf("%8d  %14.2f  %14.2f  %14.2f  %10.3f  %10.3f\n", mb, copy_gbs, ag_bus, ar_bus, ag_bus / copy_gbs,
                ar_bus / copy_gbs);
    std::fflush(stdout);
  }
  return 0;
}
