// Products with a frozen weight W [out, in] (no gradient of its own): x W^T forward,
// g W for the input's gradient. PyTorch's CPU matrix product in bfloat16 or half,
// on a processor without native units for them (AVX2), is some 30 times slower when
// both operands are row-major (g W) than when one is transposed; there g is copied
// transposed first (a copy of the gradient's own size) and read as a transposed view.
#pragma once

#include <torch/torch.h>

namespace herd::model {

// g W: g [..., out], W [out, in] -> [..., in].
torch::Tensor input_grad(const torch::Tensor& g, const torch::Tensor& w);
// The same for a g [rows, out]: into `out` [rows, in]; added to dx (set if undefined).
void input_grad_out(torch::Tensor out, const torch::Tensor& g, const torch::Tensor& w);
void add_input_grad(torch::Tensor& dx, const torch::Tensor& g, const torch::Tensor& w);

// x W^T with a gradient for x only, through input_grad.
torch::Tensor frozen_matmul(const torch::Tensor& x, const torch::Tensor& w);

}  // namespace herd::model
