// The next-token loss a chunk of positions at a time (trainer.loss_chunk_tokens), as
// Liger's fused linear cross-entropy and torchtune's chunked output loss bound the
// logits' memory: only one chunk's logits [chunk, vocab] and their gradient exist
// at once, instead of [batch x tokens, vocab] each.
#pragma once

#include <cstdint>

#include <torch/torch.h>

namespace herd::model {

// Cross-entropy of the logits hidden @ weight^T against targets, float32 [rows]:
// hidden [rows, H] (with or without a gradient), weight [vocab, H] frozen and of
// hidden's dtype, int64 targets [rows]. Each chunk of `chunk` rows makes its logits,
// their loss (log-sum-exp in float32) and, when hidden needs a gradient, d loss /
// d hidden for a gradient of one ([rows, H] in hidden's dtype, kept for backward);
// then its logits go. Backward scales each row of what was kept by the row's
// incoming gradient: it reads neither the logits nor the weight, so a sharded
// lm_head can be released as soon as the forward is done. `fused`: the CUDA kernels
// for the loss where they apply (worker/model/fused.h), else torch's ops.
torch::Tensor chunked_cross_entropy(const torch::Tensor& hidden, const torch::Tensor& weight,
                                    const torch::Tensor& targets, int64_t chunk, bool fused);

}  // namespace herd::model
