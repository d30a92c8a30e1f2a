// The decoder's element-wise ops as fused CUDA kernels (kernels/fused_cuda.h), with
// their backward, for tensors on a GPU. Each returns an undefined tensor where it
// does not apply (a CPU tensor, a build without CUDA, a shape the kernel does not
// take); the caller then runs the eager ops, which stay the reference.
#pragma once

#include <optional>
#include <vector>

#include <torch/torch.h>

#include "kernels/dropout.h"
#include "kernels/float_type.h"

namespace herd::model {

// The kernels' element type for float32, bfloat16 or float16 (float32 otherwise).
kernels::FloatType kernel_type(torch::ScalarType t);

// transformers' LlamaRMSNorm of x [..., hidden] with a float32 weight [hidden].
torch::Tensor fused_rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);
// {x, fused_rms_norm(x)} as one node, the first x itself (a view, no copy) for a
// residual add after the block: the backward kernel adds that path's gradient into
// the norm's, a pass fewer than autograd's sum of the two. Empty where
// fused_rms_norm does not apply.
std::vector<torch::Tensor> fused_rms_norm_residual(const torch::Tensor& x, const torch::Tensor& weight, double eps);
// x cos + rotate_half(x) sin for x [batch, tokens, heads, head_dim]; cos and sin
// [tokens, head_dim] or [batch, 1, tokens, head_dim], of x's dtype.
torch::Tensor fused_rotary(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);
// silu(gate) * up.
torch::Tensor fused_silu_mul(const torch::Tensor& gate, const torch::Tensor& up);
// One adapter's part of its input's gradient: d_low @ a, d_low [rows, r] and a [r,
// cols] of dx's dtype, under the dropout draw that made the adapter's input (none:
// no dropout), its mask regenerated (worker/model/dropout.h).
struct LoraInputTerm {
  torch::Tensor d_low, a;
  std::optional<kernels::DropoutDraw> dropout;
};
// dx [rows, cols] += the sum of the terms, in one pass over dx (each term's product
// is never stored). False, dx untouched, where the kernel does not apply (then the
// caller uses torch's ops).
bool fused_lora_input_grad(torch::Tensor& dx, const std::vector<LoraInputTerm>& terms);
// Per-row cross-entropy (float32 [rows]) of logits [rows, vocab] against int64
// targets [rows], computed in float32 from the logits as they are (bfloat16 logits
// are not copied to float32 first).
torch::Tensor fused_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets);
// {fused_cross_entropy's loss, softmax(logits) - onehot(targets) in the logits' dtype}:
// the loss and its gradient for a gradient of one, no autograd. Empty where
// fused_cross_entropy does not apply.
std::vector<torch::Tensor> fused_cross_entropy_and_grad(const torch::Tensor& logits, const torch::Tensor& targets);

}  // namespace herd::model
