// LoRA dropout with herd's counter-based masks (kernels/dropout.h), what every
// adapter on a GPU uses: a draw is two numbers from the default generator of x's
// device (activation recompute replays it, as it replays torch's dropout), and the
// mask is regenerated from them wherever it is needed, never stored. On the CPU
// adapters use torch's dropout unless LoraSpec::Dropout asks for this one.
#pragma once

#include <vector>

#include <torch/torch.h>

#include "kernels/dropout.h"

namespace herd::model {

// A draw dropping each element with probability p in (0, 1), from the default
// generator of `device` (a GPU's advances its Philox offset as torch's dropout does).
kernels::DropoutDraw draw_dropout(torch::Device device, double p);

// The draw's mask for a tensor of `like`'s shape, bool on like's device.
torch::Tensor dropout_mask(const kernels::DropoutDraw& d, const torch::Tensor& like);

// x * keep * scale under the draw, rounded once; differentiable (the gradient is
// the same dropout of the output's gradient).
torch::Tensor philox_dropout(const torch::Tensor& x, const kernels::DropoutDraw& d);

// x under each draw, without autograd; on a GPU one kernel reads x once for all.
std::vector<torch::Tensor> philox_dropouts(const torch::Tensor& x, const std::vector<kernels::DropoutDraw>& draws);

// A draw as four integers, for an autograd node's saved data, and back.
std::vector<int64_t> draw_to_ints(const kernels::DropoutDraw& d);
kernels::DropoutDraw draw_from_ints(const std::vector<int64_t>& ints, size_t at = 0);

}  // namespace herd::model
