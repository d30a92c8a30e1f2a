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

}  // namespace herd::train
