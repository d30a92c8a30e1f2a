// NF4 dequantize on the GPU against a device-to-device copy on the same GPU, as a
// fraction of its bandwidth. The weight is Llama-2-70B's MLP projection
// (28672 x 8192), double-quantized as the seed's; bytes moved = packed codes +
// absmax codes + nested absmax read, output written; the copy moves its bytes once
// each way. Median of 20 after 3 warm-ups, CUDA events.
//   herd_bench_nf4_dequant_cuda [--rows 28672] [--cols 8192]
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "kernels/nf4.h"
#include "kernels/nf4_cuda.h"

using namespace herd::kernels;

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

template <class F>
float median_ms(F&& run) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < 3; ++i) run();
  std::vector<float> ms;
  for (int i = 0; i < 20; ++i) {
    cudaEventRecord(a);
    run();
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  size_t rows = 28672, cols = 8192;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--rows") rows = std::stoul(argv[i + 1]);
    if (std::string(argv[i]) == "--cols") cols = std::stoul(argv[i + 1]);
  }
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("no GPU: nothing to measure\n");
    return 0;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  const size_t n = rows * cols, nblocks = nf4_blocks(n), nnested = nested_blocks(nblocks);

  std::mt19937 rng(0);
  std::vector<uint8_t> packed(nf4_packed_bytes(n)), codes(nblocks);
  for (auto& b : packed) b = static_cast<uint8_t>(rng());
  for (auto& c : codes) c = static_cast<uint8_t>(rng());
  std::vector<float> nested(nnested, 0.05f);

  uint8_t *d_packed, *d_codes;
  float *d_nested, *d_map, *d_table;
  void *d_out, *d_copy;
  check(cudaMalloc(&d_packed, packed.size()), "cudaMalloc");
  check(cudaMalloc(&d_codes, codes.size()), "cudaMalloc");
  check(cudaMalloc(&d_nested, nested.size() * 4), "cudaMalloc");
  check(cudaMalloc(&d_map, 256 * 4), "cudaMalloc");
  check(cudaMalloc(&d_table, 16 * 4), "cudaMalloc");
  check(cudaMalloc(&d_out, n * 4), "cudaMalloc");
  check(cudaMalloc(&d_copy, n * 4), "cudaMalloc");
  cudaMemcpy(d_packed, packed.data(), packed.size(), cudaMemcpyHostToDevice);
  cudaMemcpy(d_codes, codes.data(), codes.size(), cudaMemcpyHostToDevice);
  cudaMemcpy(d_nested, nested.data(), nested.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(d_map, kDynamicMap, 256 * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(d_table, kNf4Codes, 16 * 4, cudaMemcpyHostToDevice);

  Nf4Source s;
  s.packed = d_packed;
  s.n = n;
  s.absmax_codes = d_codes;
  s.nested_absmax = d_nested;
  s.offset = 0.01f;
  s.nested_map = d_map;
  s.code_table = d_table;

  std::printf("%s: NF4 dequantize of a %zu x %zu weight (double-quantized absmax)\n", prop.name, rows, cols);
  std::printf("%10s  %10s  %12s  %14s  %14s  %8s\n", "out", "kernel", "ms", "dequant GB/s", "copy GB/s", "ratio");
  struct Case {
    const char* name;
    FloatType type;
    size_t bytes;
  };
  for (const Case c : {Case{"bfloat16", FloatType::kBFloat16, 2}, Case{"float16", FloatType::kFloat16, 2},
                       Case{"float32", FloatType::kFloat32, 4}}) {
    const auto type = c.type;
    const size_t bytes = c.bytes;
    const char* name = c.name;
    const float copy = median_ms([&] { cudaMemcpyAsync(d_copy, d_out, n * bytes, cudaMemcpyDeviceToDevice); });
    const double moved = static_cast<double>(packed.size() + codes.size() + nested.size() * 4 + n * bytes);
    const double copy_gbs = 2.0 * n * bytes / (copy * 1e-3) / 1e9;
    for (const auto& k : {std::pair{"herd", &nf4_dequantize_cuda}, std::pair{"wide", &nf4_dequantize_cuda_wide}}) {
      const char* kernel = k.first;
      const auto fn = k.second;
      const float dq = median_ms([&] { check(static_cast<cudaError_t>(fn(s, d_out, type, nullptr)), kernel); });
      const double dq_gbs = moved / (dq * 1e-3) / 1e9;
      std::printf("%10s  %10s  %12.3f  %14.1f  %14.1f  %8.3f\n", name, kernel, dq, dq_gbs, copy_gbs, dq_gbs / copy_gbs);
    }
  }
  // Batch-1 decoding: y = x W^T straight from the codes, against dequantizing W alone
  // (the unfused path then still reads the dequantized W once more for its GEMV).
  void *d_x, *d_y;
  check(cudaMalloc(&d_x, cols * 2), "cudaMalloc");
  check(cudaMalloc(&d_y, rows * 2), "cudaMalloc");
  check(cudaMemset(d_x, 0x3c, cols * 2), "cudaMemset");  // bf16 0x3c3c, about 0.0115
  const float gemv_ms = median_ms([&] {
    check(static_cast<cudaError_t>(nf4_gemv_cuda(s, rows, cols, d_x, d_y, FloatType::kBFloat16, nullptr)), "gemv");
  });
  const float dequant_ms = median_ms([&] {
    check(static_cast<cudaError_t>(nf4_dequantize_cuda(s, d_out, FloatType::kBFloat16, nullptr)), "dequantize");
  });
  const double code_bytes = static_cast<double>(packed.size() + codes.size() + nested.size() * 4);
  std::printf("gemv (bf16, one row): %.3f ms, %.1f GB/s of codes; dequantize to bf16 alone: %.3f ms (%.2fx the gemv)\n",
              gemv_ms, code_bytes / (gemv_ms * 1e-3) / 1e9, dequant_ms, dequant_ms / gemv_ms);
  check(cudaDeviceSynchronize(), "sync");
  return 0;
}
