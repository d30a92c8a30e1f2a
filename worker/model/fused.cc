#include "worker/model/fused.h"

#ifdef HERD_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/device.h"
#include "kernels/fused_cuda.h"
#endif

namespace herd::model {

kernels::FloatType kernel_type(torch::ScalarType t) {
  return t == torch::kBFloat16  ? kernels::FloatType::kBFloat16
         : t == torch::kFloat16 ? kernels::FloatType::kFloat16
                                : kernels::FloatType::kFloat32;
}

#ifdef HERD_CUDA
namespace {

namespace k = herd::kernels;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool takes(const torch::Tensor& x) {
  const auto t = x.scalar_type();
  return x.is_cuda() && (t == torch::kFloat32 || t == torch::kBFloat16 || t == torch::kFloat16);
}

bool rms_norm_takes(const torch::Tensor& x, const torch::Tensor& weight) {
  return takes(x) && x.dim() > 0 && x.size(-1) % 8 == 0 && weight.device() == x.device() &&
         weight.scalar_type() == torch::kFloat32 && weight.numel() == x.size(-1);
}

k::FloatType float_type(const torch::Tensor& x) { return kernel_type(x.scalar_type()); }

void* stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

void check(int rc, const char* what) { TORCH_CHECK(rc == 0, what, " kernel: ", kernels::cuda_error(rc)); }

// A gradient as the kernels take it: contiguous, of the forward's dtype.
torch::Tensor plain(const torch::Tensor& grad, const torch::Tensor& like) {
  return grad.to(like.scalar_type()).contiguous();
}

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  auto y = torch::empty_like(x);
  const int64_t cols = x.size(-1);
  check(k::rms_norm_cuda(x.data_ptr(), weight.data_ptr<float>(), static_cast<size_t>(x.numel() / cols),
                         static_cast<size_t>(cols), static_cast<float>(eps), y.data_ptr(), float_type(x), stream()),
        "RMSNorm");
  return y;
}

// x's gradient from y's (and `add`, x's gradient from elsewhere, when defined).
torch::Tensor rms_norm_backward(const torch::Tensor& grad, const torch::Tensor& x, const torch::Tensor& weight,
                                double eps, const torch::Tensor& add) {
  auto g = plain(grad, x);
  auto more = add.defined() ? plain(add, x) : torch::Tensor();
  auto dx = torch::empty_like(x);
  const int64_t cols = x.size(-1);
  check(k::rms_norm_backward_cuda(g.data_ptr(), x.data_ptr(), weight.data_ptr<float>(),
                                  more.defined() ? more.data_ptr() : nullptr, static_cast<size_t>(x.numel() / cols),
                                  static_cast<size_t>(cols), static_cast<float>(eps), dx.data_ptr(), float_type(x),
                                  stream()),
        "RMSNorm backward");
  return dx;
}

struct RmsNorm : public torch::autograd::Function<RmsNorm> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& weight, double eps) {
    ctx->save_for_backward({x, weight});
    ctx->saved_data["eps"] = eps;
    return rms_norm(x, weight, eps);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    return {rms_norm_backward(grad[0], saved[0], saved[1], ctx->saved_data["eps"].toDouble(), {}), torch::Tensor(),
            torch::Tensor()};
  }
};

// {x, rms_norm(x)}, the first x itself (a view) for the residual add after the
// block: both gradients meet here and the backward kernel sums them.
struct RmsNormResidual : public torch::autograd::Function<RmsNormResidual> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& weight, double eps) {
    ctx->save_for_backward({x, weight});
    ctx->saved_data["eps"] = eps;
    return {x, rms_norm(x, weight, eps)};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    if (!grad[1].defined()) return {grad[0], torch::Tensor(), torch::Tensor()};
    const auto saved = ctx->get_saved_variables();
    return {rms_norm_backward(grad[1], saved[0], saved[1], ctx->saved_data["eps"].toDouble(), grad[0]), torch::Tensor(),
            torch::Tensor()};
  }
};

// cos and sin as [cos_batch, tokens, head_dim].
torch::Tensor rotary(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, bool transpose) {
  auto y = torch::empty_like(x);
  check(k::rotary_cuda(x.data_ptr(), cos.data_ptr(), sin.data_ptr(), static_cast<size_t>(x.size(0)),
                       static_cast<size_t>(x.size(1)), static_cast<size_t>(x.size(2)), static_cast<size_t>(x.size(3)),
                       static_cast<size_t>(cos.size(0)), transpose, y.data_ptr(), float_type(x), stream()),
        "rotary");
  return y;
}

struct Rotary : public torch::autograd::Function<Rotary> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& cos,
                               const torch::Tensor& sin) {
    ctx->save_for_backward({cos, sin});
    return rotary(x, cos, sin, false);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    return {rotary(plain(grad[0], saved[0]), saved[0], saved[1], true), torch::Tensor(), torch::Tensor()};
  }
};

struct SiluMul : public torch::autograd::Function<SiluMul> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& gate, const torch::Tensor& up) {
    ctx->save_for_backward({gate, up});
    auto y = torch::empty_like(gate);
    check(k::silu_mul_cuda(gate.data_ptr(), up.data_ptr(), static_cast<size_t>(gate.numel()), y.data_ptr(),
                           float_type(gate), stream()),
          "SiLU product");
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const auto &gate = saved[0], &up = saved[1];
    auto g = plain(grad[0], gate);
    auto d_gate = torch::empty_like(gate), d_up = torch::empty_like(up);
    check(k::silu_mul_backward_cuda(g.data_ptr(), gate.data_ptr(), up.data_ptr(), static_cast<size_t>(gate.numel()),
                                    d_gate.data_ptr(), d_up.data_ptr(), float_type(gate), stream()),
          "SiLU product backward");
    return {d_gate, d_up};
  }
};

struct CrossEntropy : public torch::autograd::Function<CrossEntropy> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& logits, const torch::Tensor& targets) {
    const auto rows = static_cast<size_t>(logits.size(0)), vocab = static_cast<size_t>(logits.size(1));
    auto f32 = logits.options().dtype(torch::kFloat32);
    auto loss = torch::empty({logits.size(0)}, f32), lse = torch::empty({logits.size(0)}, f32);
    check(k::cross_entropy_cuda(logits.data_ptr(), targets.data_ptr<int64_t>(), rows, vocab, loss.data_ptr<float>(),
                                lse.data_ptr<float>(), float_type(logits), stream()),
          "cross-entropy");
    ctx->save_for_backward({logits, targets, lse});
    return loss;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const auto &logits = saved[0], &targets = saved[1], &lse = saved[2];
    auto g = grad[0].to(torch::kFloat32).contiguous();
    auto d = torch::empty_like(logits);
    check(
        k::cross_entropy_backward_cuda(logits.data_ptr(), targets.data_ptr<int64_t>(), lse.data_ptr<float>(),
                                       g.data_ptr<float>(), static_cast<size_t>(logits.size(0)),
                                       static_cast<size_t>(logits.size(1)), d.data_ptr(), float_type(logits), stream()),
        "cross-entropy backward");
    return {d, torch::Tensor()};
  }
};

}  // namespace

torch::Tensor fused_rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  if (!rms_norm_takes(x, weight)) return {};
  const c10::cuda::CUDAGuard guard(x.device());
  return RmsNorm::apply(x.contiguous(), weight.contiguous(), eps);
}

std::vector<torch::Tensor> fused_rms_norm_residual(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  if (!rms_norm_takes(x, weight)) return {};
  const c10::cuda::CUDAGuard guard(x.device());
  return RmsNormResidual::apply(x.contiguous(), weight.contiguous(), eps);
}

torch::Tensor fused_rotary(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  if (!takes(x) || x.dim() != 4 || x.size(3) % 16 != 0 || cos.scalar_type() != x.scalar_type() ||
      sin.scalar_type() != x.scalar_type() || cos.device() != x.device() || sin.device() != x.device() ||
      cos.sizes() != sin.sizes()) {
    return {};
  }
  const int64_t B = x.size(0), T = x.size(1), D = x.size(3);
  torch::Tensor c, s;  // [1 or B, T, D]
  if (cos.dim() == 2 && cos.size(0) == T && cos.size(1) == D) {
    c = cos.view({1, T, D});
    s = sin.view({1, T, D});
  } else if (cos.dim() == 4 && cos.size(0) == B && cos.size(1) == 1 && cos.size(2) == T && cos.size(3) == D) {
    c = cos.view({B, T, D});
    s = sin.view({B, T, D});
  } else {
    return {};
  }
  const c10::cuda::CUDAGuard guard(x.device());
  return Rotary::apply(x.contiguous(), c.contiguous(), s.contiguous());
}

torch::Tensor fused_silu_mul(const torch::Tensor& gate, const torch::Tensor& up) {
  if (!takes(gate) || gate.sizes() != up.sizes() || up.scalar_type() != gate.scalar_type() ||
      up.device() != gate.device() || gate.numel() % 8 != 0) {
    return {};
  }
  const c10::cuda::CUDAGuard guard(gate.device());
  return SiluMul::apply(gate.contiguous(), up.contiguous());
}

bool fused_lora_input_grad(torch::Tensor& dx, const std::vector<LoraInputTerm>& terms) {
  if (!takes(dx) || dx.dim() != 2 || !dx.is_contiguous() || dx.size(1) % 8 != 0 || terms.empty() ||
      terms.size() > static_cast<size_t>(k::kMaxLoraInputGrads)) {
    return false;
  }
  auto fits = [&](const torch::Tensor& t) { return t.scalar_type() == dx.scalar_type() && t.device() == dx.device(); };
  auto aligned = [](const torch::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; };
  std::vector<torch::Tensor> keep;
  std::vector<k::LoraInputGrad> grads;
  for (const auto& t : terms) {
    const int64_t r = t.d_low.dim() == 2 ? t.d_low.size(1) : 0;
    if (!fits(t.d_low) || !fits(t.a) || r < 1 || r > k::kMaxLoraRank || t.d_low.size(0) != dx.size(0) ||
        t.a.sizes() != torch::IntArrayRef{r, dx.size(1)}) {
      return false;
    }
    auto d_low = t.d_low.contiguous(), a = t.a.contiguous();
    if (!aligned(a)) return false;
    keep.insert(keep.end(), {d_low, a});
    grads.push_back({d_low.data_ptr(), a.data_ptr(), t.dropout.value_or(k::DropoutDraw{}), t.dropout.has_value(),
                     static_cast<int>(r)});
  }
  if (!aligned(dx)) return false;
  const c10::cuda::CUDAGuard guard(dx.device());
  check(k::lora_input_grad_cuda(grads.data(), static_cast<int>(grads.size()), static_cast<size_t>(dx.size(0)),
                                static_cast<size_t>(dx.size(1)), dx.data_ptr(), float_type(dx), stream()),
        "LoRA input gradient");
  return true;
}

namespace {
bool cross_entropy_takes(const torch::Tensor& logits, const torch::Tensor& targets) {
  return takes(logits) && logits.dim() == 2 && logits.size(1) % 8 == 0 && logits.size(1) > 0 &&
         targets.scalar_type() == torch::kInt64 && targets.device() == logits.device() &&
         targets.sizes() == torch::IntArrayRef{logits.size(0)};
}
}  // namespace

torch::Tensor fused_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets) {
  if (!cross_entropy_takes(logits, targets)) return {};
  const c10::cuda::CUDAGuard guard(logits.device());
  return CrossEntropy::apply(logits.contiguous(), targets.contiguous());
}

std::vector<torch::Tensor> fused_cross_entropy_and_grad(const torch::Tensor& logits, const torch::Tensor& targets) {
  if (!cross_entropy_takes(logits, targets)) return {};
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto x = logits.contiguous();
  const auto t = targets.contiguous();
  const auto rows = static_cast<size_t>(x.size(0)), vocab = static_cast<size_t>(x.size(1));
  auto f32 = x.options().dtype(torch::kFloat32);
  auto loss = torch::empty({x.size(0)}, f32), lse = torch::empty({x.size(0)}, f32);
  auto ones = torch::ones({x.size(0)}, f32);
  auto d = torch::empty_like(x);
  check(k::cross_entropy_cuda(x.data_ptr(), t.data_ptr<int64_t>(), rows, vocab, loss.data_ptr<float>(),
                              lse.data_ptr<float>(), float_type(x), stream()),
        "cross-entropy");
  check(k::cross_entropy_backward_cuda(x.data_ptr(), t.data_ptr<int64_t>(), lse.data_ptr<float>(),
                                       ones.data_ptr<float>(), rows, vocab, d.data_ptr(), float_type(x), stream()),
        "cross-entropy backward");
  return {loss, d};
}

#else

torch::Tensor fused_rms_norm(const torch::Tensor&, const torch::Tensor&, double) { return {}; }
std::vector<torch::Tensor> fused_rms_norm_residual(const torch::Tensor&, const torch::Tensor&, double) { return {}; }
torch::Tensor fused_rotary(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) { return {}; }
torch::Tensor fused_silu_mul(const torch::Tensor&, const torch::Tensor&) { return {}; }
bool fused_lora_input_grad(torch::Tensor&, const std::vector<LoraInputTerm>&) { return false; }
torch::Tensor fused_cross_entropy(const torch::Tensor&, const torch::Tensor&) { return {}; }
std::vector<torch::Tensor> fused_cross_entropy_and_grad(const torch::Tensor&, const torch::Tensor&) { return {}; }

#endif

}  // namespace herd::model
