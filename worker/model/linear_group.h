// The fused path's linear layers (LoadOptions::fused_kernels): the layers of a
// decoder layer that read the same input (q, k and v; gate and up, or one alone) as
// one autograd node. The forward is LoraLinear::forward's math for each layer. The
// backward builds x's gradient in one tensor: each base layer's part accumulates in
// its GEMM (beta 1) and the adapters' parts, dropout masks applied, in one more pass
// over it (fused_lora_input_grad on a GPU), where autograd keeps one gradient per
// consumer of x and adds them pair by pair. Dropout is herd's counter-based one
// (worker/model/dropout.h): one pass over x makes every adapter's input, and the
// backward regenerates the masks instead of keeping them.
#pragma once

#include <vector>

#include <torch/torch.h>

#include "worker/model/lora_linear.h"

namespace herd::model {

// {x W_i^T + s_i dropout_i(x) A_i^T B_i^T} for the layers, in their order. Empty
// where it does not apply, and the caller runs LoraLinear::forward: the layers'
// compute dtype or an adapter's dtype (LoraLinear::adapter_dtype) is not x's, DoRA, one
// row without gradients (the NF4 gemv's case), or torch's dropout (the CPU's by
// default, LoraSpec::Dropout).
std::vector<torch::Tensor> linear_group(const std::vector<const LoraLinear*>& linears, const torch::Tensor& x,
                                        bool training);

}  // namespace herd::model
