#include "worker/model/linear_group.h"

#include <optional>

#include "worker/model/dropout.h"
#include "worker/model/frozen_matmul.h"
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
    // The adapters' dropout draws, in the layers' order (as each layer alone draws
    // them), and their inputs after dropout from one pass over x.
    std::vector<int64_t> layers, draws;
    std::vector<kernels::DropoutDraw> drawn;
    for (const LoraLinear* l : linears) {
      layers.push_back(reinterpret_cast<int64_t>(l));
      if (const auto& spec = l->lora_spec(); spec && training && spec->dropout > 0) {
        drawn.push_back(draw_dropout(x.device(), spec->dropout));
        const auto ints = draw_to_ints(drawn.back());
        draws.insert(draws.end(), ints.begin(), ints.end());
      }
    }
    const auto dropped = philox_dropouts(x, drawn);
    std::vector<torch::Tensor> saved(adapters.begin(), adapters.end());
    variable_list out;
    size_t a = 0, d = 0;
    for (const LoraLinear* l : linears) {
      auto y = torch::mm(x, l->weight().materialize(dtype).t());
      if (const auto& spec = l->lora_spec()) {
        const auto& h = training && spec->dropout > 0 ? dropped[d++] : x;  // the adapter's input
        auto low = torch::mm(h, adapters[a].to(dtype).t());
        y.addmm_(low, adapters[a + 1].to(dtype).t(), 1.0, spec->scaling);
        saved.insert(saved.end(), {h, low});
        a += 2;
      }
      out.push_back(y);
    }
    ctx->saved_data["layers"] = layers;
    ctx->saved_data["draws"] = draws;
    ctx->saved_data["training"] = training;
    ctx->save_for_backward(saved);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const auto layers = ctx->saved_data["layers"].toIntVector();
    const auto draws = ctx->saved_data["draws"].toIntVector();
    const bool training = ctx->saved_data["training"].toBool();
    const size_t n_adapters = saved.size() / 4;  // A, B, then h and low of each
    // One gradient per forward argument: x, A and B of each adapter, the layers, training.
    variable_list out(1 + 2 * n_adapters + 2);
    torch::Tensor& dx = out[0];
    std::vector<LoraInputTerm> terms;  // the adapters' parts of dx
    size_t a = 0, d = 0;
    for (size_t i = 0; i < layers.size(); ++i) {
      const auto* l = reinterpret_cast<const LoraLinear*>(layers[i]);
      const torch::Tensor& g = grad[i];
      if (g.defined()) {
        add_input_grad(dx, g, l->weight().materialize(g.scalar_type()));
      }
      if (!l->has_lora()) continue;
      const auto& spec = *l->lora_spec();
      std::optional<kernels::DropoutDraw> draw;
      if (training && spec.dropout > 0) draw = draw_from_ints(draws, 4 * d++);
      if (g.defined()) {
        const auto &A = saved[2 * a], &B = saved[2 * a + 1];
        const auto &h = saved[2 * n_adapters + 2 * a], &low = saved[2 * n_adapters + 2 * a + 1];
        auto d_low = torch::mm(g, B.to(g.scalar_type())).mul_(spec.scaling);  // [M, r]
        out[1 + 2 * a] = torch::mm(d_low.t(), h).to(A.scalar_type());
        out[2 + 2 * a] = torch::mm(g.t(), low).mul_(spec.scaling).to(B.scalar_type());
        terms.push_back({d_low, A.to(g.scalar_type()), draw});
      }
      ++a;
    }
    if (!terms.empty() && !fused_lora_input_grad(dx, terms)) {
      for (const auto& t : terms) {
        if (t.dropout) {
          dx.add_(philox_dropouts(torch::mm(t.d_low, t.a), {*t.dropout})[0]);
        } else {
          dx.addmm_(t.d_low, t.a);
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
    if (l->adapter_dtype(x) != dtype || l->dora()) return {};  // DoRA: each layer on its own
    // The group regenerates dropout's masks from their draws; torch's dropout (the
    // CPU's default) keeps its masks, which only each layer on its own handles.
    if (training && l->lora_spec()->dropout > 0 && !l->lora_spec()->philox_dropout(x)) return {};
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
