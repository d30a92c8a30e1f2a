#include "worker/model/frozen_matmul.h"

namespace herd::model {

namespace {

// g [rows, out] laid out for the fast product g W.
torch::Tensor left_operand(const torch::Tensor& g) {
  const auto t = g.scalar_type();
  const bool slow = g.device().is_cpu() && (t == torch::kBFloat16 || t == torch::kHalf);
  return slow ? g.t().contiguous().t() : g;
}

struct FrozenMatmul : public torch::autograd::Function<FrozenMatmul> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& w) {
    ctx->save_for_backward({w});
    return torch::matmul(x, w.t());
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad) {
    return {input_grad(grad[0], ctx->get_saved_variables()[0]), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor input_grad(const torch::Tensor& g, const torch::Tensor& w) {
  auto shape = g.sizes().vec();
  shape.back() = w.size(1);
  return torch::mm(left_operand(g.reshape({-1, g.size(-1)})), w).view(shape);
}

void input_grad_out(torch::Tensor out, const torch::Tensor& g, const torch::Tensor& w) {
  torch::mm_out(out, left_operand(g), w);
}

void add_input_grad(torch::Tensor& dx, const torch::Tensor& g, const torch::Tensor& w) {
  if (dx.defined()) {
    dx.addmm_(left_operand(g), w);
  } else {
    dx = torch::mm(left_operand(g), w);
  }
}

torch::Tensor frozen_matmul(const torch::Tensor& x, const torch::Tensor& w) {
  return FrozenMatmul::apply(x, w.detach());
}

}  // namespace herd::model
