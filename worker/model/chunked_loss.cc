#include "worker/model/chunked_loss.h"

#include <algorithm>
#include <utility>

#include "worker/model/frozen_matmul.h"
#include "worker/model/fused.h"

namespace herd::model {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// {loss float32 [rows], softmax(logits) - onehot(targets) in the logits' dtype, or
// none without `grad`}.
std::pair<torch::Tensor, torch::Tensor> loss_and_grad(const torch::Tensor& logits, const torch::Tensor& targets,
                                                      bool fused, bool grad) {
  if (fused) {
    if (auto both = fused_cross_entropy_and_grad(logits, targets); !both.empty()) return {both[0], both[1]};
  }
  const auto x = logits.to(torch::kFloat32);
  const auto lse = x.logsumexp(1);
  const auto column = targets.unsqueeze(1);
  auto loss = lse - x.gather(1, column).squeeze(1);
  if (!grad) return {loss, {}};
  auto d = (x - lse.unsqueeze(1)).exp_();
  d.scatter_add_(1, column, torch::full({x.size(0), 1}, -1.0f, d.options()));
  return {loss, d.to(logits.scalar_type())};
}

struct ChunkedCrossEntropy : public torch::autograd::Function<ChunkedCrossEntropy> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& hidden, const torch::Tensor& weight,
                               const torch::Tensor& targets, int64_t chunk, bool fused) {
    const int64_t rows = hidden.size(0);
    const bool grad = hidden.requires_grad();
    auto loss = torch::empty({rows}, hidden.options().dtype(torch::kFloat32));
    const torch::Tensor d_hidden = grad ? torch::empty_like(hidden, torch::MemoryFormat::Contiguous) : torch::Tensor();
    for (int64_t start = 0; start < rows; start += chunk) {
      const int64_t end = std::min(rows, start + chunk);
      const auto logits = torch::matmul(hidden.slice(0, start, end), weight.t());
      const auto [l, d] = loss_and_grad(logits, targets.slice(0, start, end), fused, grad);
      loss.slice(0, start, end).copy_(l);
      if (grad) {
        input_grad_out(d_hidden.slice(0, start, end), d, weight);
      }
    }
    ctx->save_for_backward({d_hidden});
    return loss;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto d_hidden = ctx->get_saved_variables()[0];
    auto d = (d_hidden * grad[0].unsqueeze(1)).to(d_hidden.scalar_type());
    return {d, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor chunked_cross_entropy(const torch::Tensor& hidden, const torch::Tensor& weight,
                                    const torch::Tensor& targets, int64_t chunk, bool fused) {
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1),
              "chunked_cross_entropy: hidden [rows, H] and weight [vocab, H]");
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == hidden.size(0), "chunked_cross_entropy: targets [rows]");
  TORCH_CHECK(chunk > 0, "chunked_cross_entropy: chunk must be positive");
  return ChunkedCrossEntropy::apply(hidden.contiguous(), weight, targets.to(torch::kInt64), chunk, fused);
}

}  // namespace herd::model
