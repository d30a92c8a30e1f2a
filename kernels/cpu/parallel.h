// A minimal parallel loop over [0, n) for the CPU kernels: contiguous chunks, one
// per hardware thread, run on fresh threads (the kernels are called on large
// tensors, where a thread's start-up is noise). Small n runs on the caller.
#pragma once

#include <algorithm>
#include <cstddef>
#include <thread>
#include <vector>

namespace herd::kernels {

template <class F>
void parallel_for(size_t n, size_t min_per_thread, F&& body) {
  size_t threads = std::max<size_t>(1, std::thread::hardware_concurrency());
  threads = std::min(threads, std::max<size_t>(1, n / std::max<size_t>(1, min_per_thread)));
  if (threads <= 1) {
    body(size_t{0}, n);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  size_t chunk = (n + threads - 1) / threads;
  for (size_t t = 1; t < threads; ++t) {
    size_t begin = std::min(n, t * chunk), end = std::min(n, begin + chunk);
    if (begin < end) pool.emplace_back([&body, begin, end] { body(begin, end); });
  }
  body(size_t{0}, std::min(n, chunk));
  for (auto& th : pool) th.join();
}

}  // namespace herd::kernels
