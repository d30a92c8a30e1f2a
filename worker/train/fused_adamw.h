// AdamW whose step on a GPU is one fused kernel per parameter group (ATen's
// _fused_adamw_, what torch.optim.AdamW(fused=True) runs) instead of a dozen
// launches per parameter. Its state is torch::optim::AdamW's, so checkpoints are
// the same either way. Parameters on the CPU, or on several devices, take
// torch::optim::AdamW's own step.
#pragma once

#include <torch/torch.h>

namespace herd::train {

class FusedAdamW : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;
  torch::Tensor step(LossClosure closure = nullptr) override;
};

// torch::nn::utils::clip_grad_norm_ with the L2 norm: the gradients' total norm,
// and, where it exceeds max_norm, every gradient scaled by max_norm / (norm + 1e-6).
// With foreach ops: on a GPU the norms take one launch and the scaling one, where
// torch's C++ version launches two kernels a parameter. An infinite max_norm only
// measures.
double clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm);

}  // namespace herd::train
