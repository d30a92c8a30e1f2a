// NF4 dequantize throughput in GB/s of output, against memcpy of the same output
// size measured in the same run (ratios, not absolute times, are the figures).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "kernels/cpu/parallel.h"
#include "kernels/nf4.h"

namespace {

template <class F>
double median_seconds(int reps, F&& f) {
  std::vector<double> t;
  f();  // warm up: page in the buffers
  for (int i = 0; i < reps; ++i) {
    auto start = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  using namespace herd::kernels;
  const size_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : (size_t{1} << 25);
  const int reps = 15;
  std::mt19937 rng(1);
  std::vector<uint8_t> packed(nf4_packed_bytes(n));
  for (auto& b : packed) b = static_cast<uint8_t>(rng());
  std::vector<float> absmax(nf4_blocks(n), 0.05f);
  std::vector<float> out(n), src(n, 1.0f);
  std::vector<uint16_t> out16(n), src16(n, 1);

  const double gb32 = 4.0 * static_cast<double>(n) / 1e9, gb16 = 2.0 * static_cast<double>(n) / 1e9;
  double copy32 = median_seconds(reps, [&] { std::memcpy(out.data(), src.data(), n * 4); });
  double copy16 = median_seconds(reps, [&] { std::memcpy(out16.data(), src16.data(), n * 2); });
  double pcopy32 = median_seconds(reps, [&] {
    parallel_for(n, 1 << 20, [&](size_t b, size_t e) { std::memcpy(out.data() + b, src.data() + b, (e - b) * 4); });
  });
  double deq32 = median_seconds(reps, [&] { nf4_dequantize(packed.data(), absmax.data(), n, out.data()); });
  double deq16 = median_seconds(reps, [&] { nf4_dequantize_bf16(packed.data(), absmax.data(), n, out16.data()); });

  std::printf("NF4 dequantize: %zu elements, %u hardware threads, median of %d\n", n,
              std::thread::hardware_concurrency(), reps);
  std::printf("%-34s %8s %10s\n", "", "GB/s", "vs memcpy");
  std::printf("%-34s %8.2f %10s\n", "memcpy, float32 size (1 thread)", gb32 / copy32, "1.00");
  std::printf("%-34s %8.2f %10.2f\n", "memcpy, float32 size (threads)", gb32 / pcopy32, copy32 / pcopy32);
  std::printf("%-34s %8.2f %10.2f\n", "nf4 -> float32", gb32 / deq32, copy32 / deq32);
  std::printf("%-34s %8.2f %10s\n", "memcpy, bfloat16 size (1 thread)", gb16 / copy16, "1.00");
  std::printf("%-34s %8.2f %10.2f\n", "nf4 -> bfloat16", gb16 / deq16, copy16 / deq16);
  return 0;
}
