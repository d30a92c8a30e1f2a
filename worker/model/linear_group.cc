#include "worker/model/linear_group.h"

#include <tuple>

#include "worker/model/fused.h"

namespace herd::model {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// x [M, K]; `adapters` holds A and B (the float32 masters) of each layer that has an
// adapter, in the layers' order. The layers outlive the graph.
struct LinearGroup : public torch::autograd::Function<LinearGroup> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& x, torch::TensorList adapters,
                               const std::vector<const LoraLinear*>& linears, bool training) {
    const auto dtype = x.scalar_type();
    std::vector<int64_t> layers;
    std::vector<torch::Tensor> saved(adapters.begin(), adapters.end());
    variable_list out;
    size_t a = 0;
    for (const LoraLinear* l : linears) {
      layers.push_back(reinterpret_cast<int64_t>(l));
      auto y = torch::mm(x, l->weight().materialize(dtype).t());
      if (const auto& spec = l->lora_spec()) {
        torch::Tensor h = x, mask;  // the adapter's input after dropout, and dropout's mask
        if (training && spec->dropout > 0) std::tie(h, mask) = at::native_dropout(x, spec->dropout, true);
        auto low = torch::mm(h, adapters[a].to(dtype).t());
        y.addmm_(low, adapters[a + 1].to(dtype).t(), 1.0, spec->scaling);
        saved.insert(saved.end(), {h, mask, low});
        a += 2;
      }
      out.push_back(y);
    }
    ctx->saved_data["layers"] = layers;
    ctx->save_for_backward(saved);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const auto layers = ctx->saved_data["layers"].toIntVector();
    const size_t n_adapters = saved.size() / 5;  // A, B, then h, mask, low of each
    // One gradient per forward argument: x, A and B of each adapter, the layers, training.
    variable_list out(1 + 2 * n_adapters + 2);
    torch::Tensor& dx = out[0];
    std::vector<LoraInputTerm> terms;  // the adapters' parts of dx
    size_t a = 0;
    for (size_t i = 0; i < layers.size(); ++i) {
      const auto* l = reinterpret_cast<const LoraLinear*>(layers[i]);
      const torch::Tensor& g = grad[i];
      if (g.defined()) {
        const auto w = l->weight().materialize(g.scalar_type());
        if (dx.defined()) {
          dx.addmm_(g, w);
        } else {
          dx = torch::mm(g, w);
        }
      }
      if (!l->has_lora()) continue;
      if (g.defined()) {
        const auto& spec = *l->lora_spec();
        const auto &A = saved[2 * a], &B = saved[2 * a + 1];
        const size_t s = 2 * n_adapters + 3 * a;
        const auto &h = saved[s], &mask = saved[s + 1], &low = saved[s + 2];
        auto d_low = torch::mm(g, B.to(g.scalar_type())).mul_(spec.scaling);  // [M, r]
        out[1 + 2 * a] = torch::mm(d_low.t(), h).to(A.scalar_type());
        out[2 + 2 * a] = torch::mm(g.t(), low).mul_(spec.scaling).to(B.scalar_type());
        terms.push_back({d_low, A.to(g.scalar_type()), mask, mask.defined() ? 1.0 / (1.0 - spec.dropout) : 1.0});
      }
      ++a;
    }
    if (!terms.empty() && !fused_lora_input_grad(dx, terms)) {
      for (const auto& t : terms) {
        if (t.mask.defined()) {
          dx.addcmul_(torch::mm(t.d_low, t.a), t.mask, t.scale);
        } else {
          dx.addmm_(t.d_low, t.a, 1.0, t.scale);
        }
      }
    }
    return out;
  }
};

}  // namespace

std::vector<torch::Tensor> linear_group(const std::vector<const LoraLinear*>& linears, const torch::Tensor& x,
                                        bool training) {
  TORCH_CHECK(!linears.empty(), "linear_group: no layers");
  const auto dtype = x.scalar_type();
  const int64_t in = x.size(-1), rows = in > 0 ? x.numel() / in : 0;
  if (!torch::GradMode::is_enabled() && rows == 1) return {};
  std::vector<torch::Tensor> adapters;
  for (const LoraLinear* l : linears) {
    if (l->compute_dtype() != dtype || l->weight().in_features != in) return {};
    if (!l->has_lora()) continue;
    if (l->adapter_dtype(x) != dtype) return {};
    adapters.insert(adapters.end(), {l->lora_A(), l->lora_B()});
  }
  auto ys = LinearGroup::apply(x.reshape({rows, in}), torch::TensorList(adapters), linears, training);
  auto shape = x.sizes().vec();
  for (auto& y : ys) {
    shape.back() = y.size(1);
    y = y.view(shape);
  }
  return ys;
}

}  // namespace herd::model
