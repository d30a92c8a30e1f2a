#include "worker/model/flops.h"

#include <gtest/gtest.h>

namespace herd::model {
namespace {

// A shape small enough to count by hand.
FlopCounter tiny(bool recompute) {
  FlopCounter c;
  c.config.vocab_size = 10;
  c.config.hidden_size = 4;
  c.config.intermediate_size = 6;
  c.config.num_hidden_layers = 2;
  c.config.num_attention_heads = 2;
  c.config.num_key_value_heads = 1;
  c.config.head_dim = 2;
  c.lora_r = 2;
  c.lora_modules = {"q_proj", "v_proj"};
  c.recompute = recompute;
  return c;
}

TEST(Flops, ARowCountedByHand) {
  // Linears a layer: q 4x4 = 16, k 2x4 = 8, v 8, o 16, gate, up and down 6x4 = 24 each:
  // 120; two layers 240; lm_head 10x4 = 40: N = 280.
  EXPECT_EQ(tiny(true).gemm_parameters(), 280);
  // LoRA r 2 a layer: q 2 (4 + 4) = 16, v 2 (4 + 2) = 12: 28; two layers 56.
  // Attention: d = 2 heads x 2 = 4. A row of 3 tokens, per token:
  //   model    4 N = 1120, attention 12 T d L = 12 x 3 x 4 x 2 = 288, LoRA 6 x 56 = 336: 1744
  //   recompute 2 x 240 = 480, 4 T d L = 96, 2 x 56 = 112: 688
  const Flops f = tiny(true).row(3);
  EXPECT_EQ(f.model, 3 * 1744);
  EXPECT_EQ(f.hardware, 3 * (1744 + 688));
  EXPECT_EQ(tiny(false).row(3).hardware, 3 * 1744);
  // Attention grows with the row: rows sum, they do not average.
  const Flops two = tiny(true).rows({3, 5});
  EXPECT_EQ(two.model, 3 * 1744 + 5 * (1120 + 12 * 5 * 4 * 2 + 336));
}

TEST(Flops, PeaksOfKnownGpusByTheirCudaNames) {
  EXPECT_EQ(peak_flops("NVIDIA H100 80GB HBM3"), 989.4e12);
  EXPECT_EQ(peak_flops("NVIDIA H100 PCIe"), 756.5e12);
  EXPECT_EQ(peak_flops("NVIDIA H200"), 989.4e12);
  EXPECT_EQ(peak_flops("NVIDIA A100-SXM4-80GB"), 312e12);
  EXPECT_EQ(peak_flops("NVIDIA A100 80GB PCIe"), 312e12);
  EXPECT_EQ(peak_flops("NVIDIA A10"), 125e12);
  EXPECT_EQ(peak_flops("NVIDIA L40S"), 362.05e12);
  EXPECT_EQ(peak_flops("NVIDIA L4"), 121e12);
  EXPECT_FALSE(peak_flops("NVIDIA RTX A1000"));  // not an A100
  EXPECT_FALSE(peak_flops("cpu"));
}

}  // namespace
}  // namespace herd::model
