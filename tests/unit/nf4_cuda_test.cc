// herd's NF4 dequantize kernel on a GPU against the CPU reference, bit for bit:
// plain and double-quantized absmax, float32 / bfloat16 / float16 out, sizes with a
// tail and an odd count, and a packed buffer that is not 16-byte aligned (the scalar
// kernel). Skipped where there is no GPU (it runs in scripts/gpu-check).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "worker/model/lora_linear.h"

namespace herd::model {
namespace {

FrozenWeight to(FrozenWeight w, const torch::Device& device) {
  w.to(device);
  return w;
}

TEST(Nf4Cuda, BitIdenticalToTheCpuReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU here";
  for (const int64_t rows : {128, 37, 5, 1024}) {
    for (const int64_t cols : {64, 13, 4096}) {
      for (const bool double_quant : {false, true}) {
        for (const auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
          SCOPED_TRACE(testing::Message() << rows << "x" << cols << " double_quant " << double_quant << " " << dtype);
          auto g = torch::make_generator<at::CPUGeneratorImpl>(rows * 131 + cols);
          auto w = FrozenWeight::quantize(torch::randn({rows, cols}, g) * 0.05, double_quant);
          w.dtype = dtype;
          const auto gpu = to(w, torch::Device(torch::kCUDA, 0)).materialize(dtype);
          ASSERT_TRUE(gpu.is_cuda());
          EXPECT_TRUE(torch::equal(gpu.cpu(), w.materialize(dtype)));
        }
      }
    }
  }
}

TEST(Nf4CudaAlignment, AnUnalignedPackedBufferTakesTheScalarKernel) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU here";
  auto weight = torch::randn({64, 96}) * 0.05;
  auto w = FrozenWeight::quantize(weight, true);
  w.dtype = torch::kBFloat16;
  auto gpu = to(w, torch::Device(torch::kCUDA, 0));
  // The same bytes one past a 16-byte boundary.
  auto shifted = torch::empty({gpu.packed.numel() + 1}, gpu.packed.options());
  shifted.slice(0, 1).copy_(gpu.packed.view({-1}));
  gpu.packed = shifted.slice(0, 1);
  ASSERT_NE(reinterpret_cast<uintptr_t>(gpu.packed.data_ptr()) % 16, 0u);
  EXPECT_TRUE(torch::equal(gpu.materialize(torch::kBFloat16).cpu(), w.materialize(torch::kBFloat16)));
}

}  // namespace
}  // namespace herd::model
