#include "worker/model/lora_linear.h"

#include <cmath>

#include "kernels/device.h"
#include "kernels/nf4.h"
#include "worker/model/dropout.h"
#include "worker/model/frozen_matmul.h"
#ifdef HERD_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/nf4_cuda.h"
#include "worker/model/fused.h"
#endif

namespace herd::model {

namespace k = herd::kernels;

torch::Tensor nf4_dequantize_torch(const torch::Tensor& packed, const torch::Tensor& absmax, int64_t numel,
                                   const torch::Tensor& code_table) {
  auto hi = torch::bitwise_right_shift(packed, 4).to(torch::kLong);
  auto lo = torch::bitwise_and(packed, 15).to(torch::kLong);
  auto codes = torch::stack({hi, lo}, 1).reshape({-1}).slice(0, 0, numel);  // high nibble first
  auto scale = absmax.repeat_interleave(static_cast<int64_t>(k::kNf4BlockSize)).slice(0, 0, numel);
  return code_table.to(packed.device()).index_select(0, codes) * scale;
}

torch::Tensor FrozenWeight::block_absmax() const {
  if (absmax.defined()) return absmax;
  const int64_t n = absmax_codes.numel();
  auto codes = absmax_codes.contiguous().cpu();
  auto nested = nested_absmax.contiguous().cpu();
  auto map = nested_map.contiguous().cpu();
  auto out = torch::empty({n}, torch::kFloat32);
  k::absmax_dequantize(codes.data_ptr<uint8_t>(), static_cast<size_t>(n), nested.data_ptr<float>(),
                       static_cast<float>(offset), out.data_ptr<float>(), map.data_ptr<float>());
  return out.to(packed.device());
}

#ifdef HERD_CUDA
namespace {
// The kernels' view of a weight whose tensors live on a GPU (the tensors it points
// into are kept alive beside it).
struct CudaSource {
  k::Nf4Source s;
  std::vector<torch::Tensor> keep;
};

CudaSource cuda_source(const FrozenWeight& w) {
  const auto device = w.packed.device();
  auto f32 = [&](const torch::Tensor& t) { return t.to(device, torch::kFloat32).contiguous(); };
  CudaSource c;
  auto packed = w.packed.contiguous(), table = f32(w.code_table);
  c.s.packed = packed.data_ptr<uint8_t>();
  c.s.n = static_cast<size_t>(w.out_features * w.in_features);
  c.s.code_table = table.data_ptr<float>();
  c.keep = {packed, table};
  if (w.absmax.defined()) {
    auto absmax = f32(w.absmax);
    c.s.absmax = absmax.data_ptr<float>();
    c.keep.push_back(absmax);
  } else {
    auto codes = w.absmax_codes.to(device).contiguous(), nested = f32(w.nested_absmax), map = f32(w.nested_map);
    c.s.absmax_codes = codes.data_ptr<uint8_t>();
    c.s.nested_absmax = nested.data_ptr<float>();
    c.s.offset = static_cast<float>(w.offset);
    c.s.nested_map = map.data_ptr<float>();
    c.keep.insert(c.keep.end(), {codes, nested, map});
  }
  return c;
}

// herd's kernel (kernels/nf4_cuda.h) on the weight's GPU, on the current stream.
torch::Tensor materialize_cuda(const FrozenWeight& w) {
  const c10::cuda::CUDAGuard guard(w.packed.device());
  const CudaSource c = cuda_source(w);
  auto out =
      torch::empty({w.out_features, w.in_features}, torch::TensorOptions().dtype(w.dtype).device(w.packed.device()));
  const int rc =
      k::nf4_dequantize_cuda(c.s, out.data_ptr(), kernel_type(w.dtype), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(rc == 0, "NF4 dequantize kernel: ", kernels::cuda_error(rc));
  return out;
}

// One row x [.., in] (batch-1 decoding, no gradient) times an NF4 weight on the GPU,
// without materializing it; an undefined tensor where the kernel does not apply.
torch::Tensor gemv_cuda(const FrozenWeight& w, const torch::Tensor& x) {
  const auto t = x.scalar_type();
  if (torch::GradMode::is_enabled() || !w.quantized() || !w.packed.is_cuda() || x.device() != w.packed.device() ||
      x.numel() != w.in_features || w.in_features % 8 != 0 ||
      (t != torch::kFloat32 && t != torch::kBFloat16 && t != torch::kFloat16)) {
    return {};
  }
  const c10::cuda::CUDAGuard guard(w.packed.device());
  const CudaSource c = cuda_source(w);
  if (reinterpret_cast<uintptr_t>(c.s.packed) % 4 != 0) return {};
  auto xs = x.contiguous();
  auto sizes = x.sizes().vec();
  sizes.back() = w.out_features;
  auto y = torch::empty(sizes, x.options());
  const int rc =
      k::nf4_gemv_cuda(c.s, static_cast<size_t>(w.out_features), static_cast<size_t>(w.in_features), xs.data_ptr(),
                       y.data_ptr(), kernel_type(t), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(rc == 0, "NF4 gemv kernel: ", kernels::cuda_error(rc));
  return y;
}
}  // namespace
#endif

torch::Tensor FrozenWeight::materialize(torch::ScalarType out_dtype) const {
  if (!quantized()) return dense.to(out_dtype);
  if (out_dtype != dtype) return materialize(dtype).to(out_dtype);
#ifdef HERD_CUDA
  if (packed.is_cuda() && (dtype == torch::kFloat32 || dtype == torch::kBFloat16 || dtype == torch::kFloat16)) {
    return materialize_cuda(*this);
  }
#endif
  const int64_t n = out_features * in_features;
  auto scale = block_absmax();
  if (packed.device().is_cpu() && (dtype == torch::kFloat32 || dtype == torch::kBFloat16)) {
    auto table = code_table.contiguous();
    auto p = packed.contiguous();
    auto out = torch::empty({out_features, in_features}, torch::TensorOptions().dtype(dtype));
    if (dtype == torch::kFloat32) {
      k::nf4_dequantize(p.data_ptr<uint8_t>(), scale.data_ptr<float>(), static_cast<size_t>(n), out.data_ptr<float>(),
                        table.data_ptr<float>());
    } else {
      k::nf4_dequantize_bf16(p.data_ptr<uint8_t>(), scale.data_ptr<float>(), static_cast<size_t>(n),
                             reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()), table.data_ptr<float>());
    }
    return out;
  }
  return nf4_dequantize_torch(packed, scale, n, code_table).view({out_features, in_features}).to(dtype);
}

size_t FrozenWeight::bytes() const {
  size_t total = 0;
  for (const auto* t : {&packed, &absmax, &absmax_codes, &nested_absmax, &dense}) {
    if (t->defined()) total += t->nbytes();
  }
  return total;
}

void FrozenWeight::to(torch::Device device) {
  for (auto* t : {&packed, &absmax, &absmax_codes, &nested_absmax, &code_table, &nested_map, &dense}) {
    if (t->defined()) *t = t->to(device);
  }
}

FrozenWeight FrozenWeight::quantize(const torch::Tensor& weight, bool double_quant) {
  TORCH_CHECK(weight.dim() == 2, "quantize: expected a 2-D weight");
  auto w = weight.to(torch::kFloat32).contiguous().cpu();
  const size_t n = static_cast<size_t>(w.numel());
  FrozenWeight f;
  f.dtype = weight.scalar_type();
  f.out_features = w.size(0);
  f.in_features = w.size(1);
  f.packed = torch::empty({static_cast<int64_t>(k::nf4_packed_bytes(n))}, torch::kUInt8);
  auto absmax = torch::empty({static_cast<int64_t>(k::nf4_blocks(n))}, torch::kFloat32);
  k::nf4_quantize(w.data_ptr<float>(), n, f.packed.data_ptr<uint8_t>(), absmax.data_ptr<float>());
  f.code_table = torch::from_blob(const_cast<float*>(k::kNf4Codes), {16}, torch::kFloat32).clone();
  if (double_quant) {
    const size_t blocks = static_cast<size_t>(absmax.numel());
    f.absmax_codes = torch::empty({absmax.numel()}, torch::kUInt8);
    f.nested_absmax = torch::empty({static_cast<int64_t>(k::nested_blocks(blocks))}, torch::kFloat32);
    float offset = 0;
    k::absmax_quantize(absmax.data_ptr<float>(), blocks, f.absmax_codes.data_ptr<uint8_t>(),
                       f.nested_absmax.data_ptr<float>(), &offset);
    f.offset = offset;
    f.nested_map = torch::from_blob(const_cast<float*>(k::kDynamicMap), {256}, torch::kFloat32).clone();
  } else {
    f.absmax = absmax;
  }
  return f;
}

FrozenWeight FrozenWeight::dense_weight(torch::Tensor weight) {
  FrozenWeight f;
  f.out_features = weight.size(0);
  f.in_features = weight.size(1);
  f.dense = weight.detach();
  return f;
}

namespace {

// x W^T with W rebuilt from its NF4 form in forward and again in backward: no
// dequantized copy outlives the call. `w` is W already rebuilt in x's dtype by the
// caller (DoRA reads it for its norm too), or null.
struct FrozenLinear : public torch::autograd::Function<FrozenLinear> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const FrozenWeight* weight, const torch::Tensor* w) {
    ctx->saved_data["weight"] = reinterpret_cast<int64_t>(weight);  // owned by the layer, which outlives the graph
    return torch::matmul(x, (w != nullptr ? *w : weight->materialize(x.scalar_type())).t());
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad) {
    const auto* weight = reinterpret_cast<const FrozenWeight*>(ctx->saved_data["weight"].toInt());
    return {input_grad(grad[0], weight->materialize(grad[0].scalar_type())), torch::Tensor(), torch::Tensor()};
  }
};

// x W^T for x in the weight's compute dtype; w as FrozenLinear takes it.
torch::Tensor base_linear(const FrozenWeight& weight, const torch::Tensor& x, const torch::Tensor& w = {}) {
  if (!weight.quantized()) return torch::matmul(x, weight.dense.to(x.scalar_type()).t());
  if (!w.defined()) return FrozenLinear::apply(x, &weight, nullptr);
  const auto in_x_dtype = w.to(x.scalar_type());
  return FrozenLinear::apply(x, &weight, &in_x_dtype);
}

// W in the dtype it is stored or dequantized in.
torch::Tensor stored_weight(const FrozenWeight& weight) {
  return weight.quantized() ? weight.materialize(weight.dtype) : weight.dense;
}

}  // namespace

LoraLinear::LoraLinear(FrozenWeight weight, torch::ScalarType compute_dtype, std::optional<LoraSpec> lora,
                       torch::Generator* init_rng)
    : weight_(std::move(weight)), compute_dtype_(compute_dtype), lora_(lora) {
  if (!lora_) return;
  // peft: A kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in)); B zeros.
  const double bound = 1.0 / std::sqrt(static_cast<double>(weight_.in_features));
  auto options = torch::TensorOptions().dtype(torch::kFloat32);
  lora_A_ = torch::empty({lora_->r, weight_.in_features}, options);
  if (init_rng != nullptr) {
    lora_A_.uniform_(-bound, bound, *init_rng);
  } else {
    lora_A_.uniform_(-bound, bound);
  }
  lora_A_.set_requires_grad(true);
  lora_B_ = torch::zeros({weight_.out_features, lora_->r}, options).set_requires_grad(true);
  if (lora_->dora) reset_magnitude();
}

std::vector<std::pair<std::string, torch::Tensor*>> LoraLinear::adapter_tensors() {
  if (!lora_) return {};
  std::vector<std::pair<std::string, torch::Tensor*>> out = {{"lora_A.weight", &lora_A_}, {"lora_B.weight", &lora_B_}};
  if (lora_->dora) out.emplace_back("lora_magnitude_vector", &magnitude_);
  return out;
}

torch::Tensor LoraLinear::weight_norm(const torch::Tensor& w) const {
  // peft's get_weight_norm: float32 W + scaling (B A), the norm of each row. One
  // [out, in] float32 buffer: the product, to which W is added in place.
  torch::NoGradGuard no_grad;
  const auto& dense = w.defined() ? w : stored_weight(weight_);
  auto sum = torch::mm(lora_B_.detach().to(torch::kFloat32), lora_A_.detach().to(torch::kFloat32));
  sum.mul_(lora_->scaling).add_(dense.to(sum.device()));
  return torch::linalg_vector_norm(sum, 2, {1});
}

void LoraLinear::reset_magnitude() { magnitude_ = weight_norm().set_requires_grad(true); }

void LoraLinear::to(torch::Device device) {
  weight_.to(device);
  if (!lora_) return;
  torch::NoGradGuard no_grad;
  lora_A_ = lora_A_.to(device).set_requires_grad(true);
  lora_B_ = lora_B_.to(device).set_requires_grad(true);
  if (magnitude_.defined()) magnitude_ = magnitude_.to(device).set_requires_grad(true);
}

torch::ScalarType LoraLinear::adapter_dtype(const torch::Tensor& x) const {
  const bool low_precision = lora_ && lora_->in_input_dtype && x.is_cuda() && x.scalar_type() != torch::kFloat32;
  return low_precision ? x.scalar_type() : torch::kFloat32;
}

torch::Tensor LoraLinear::adapter_dropout(const torch::Tensor& h) const {
  return lora_->philox_dropout(h) ? philox_dropout(h, draw_dropout(h.device(), lora_->dropout))
                                  : torch::dropout(h, lora_->dropout, true);
}

torch::Tensor LoraLinear::forward(const torch::Tensor& x, bool training) const {
  if (dora()) return dora_forward(x, training);
  auto xc = x.to(compute_dtype_);
  torch::Tensor y;
#ifdef HERD_CUDA
  y = gemv_cuda(weight_, xc);  // one row without gradients: straight from the codes
#endif
  if (!y.defined()) y = base_linear(weight_, xc);
  y = y.to(x.scalar_type());
  if (!lora_) return y;
  // peft casts the input to the adapter's dtype (float32); with in_input_dtype a GPU
  // input in half precision stays in it and the adapter is cast instead, as autocast
  // does. The second thin GEMM adds the base output in its epilogue (addmm, beta 1,
  // alpha scaling): no separate passes to scale and add. With a bfloat16 hidden
  // stream the sum is rounded once, where peft rounds the adapter's output and then
  // the sum.
  const auto dtype = adapter_dtype(x);
  const bool low_precision = dtype != torch::kFloat32;
  auto h = x.to(dtype);
  if (training && lora_->dropout > 0) h = adapter_dropout(h);
  auto low = torch::matmul(h, lora_A_.to(dtype).t()).reshape({-1, lora_->r});
  if (low_precision) {  // into the base output itself (nothing saves it): no copy of it first
    y.view({-1, weight_.out_features}).addmm_(low, lora_B_.to(dtype).t(), 1.0, lora_->scaling);
    return y;
  }
  const auto out_shape = y.sizes().vec();
  auto sum =
      torch::addmm(y.reshape({-1, weight_.out_features}).to(dtype), low, lora_B_.to(dtype).t(), 1.0, lora_->scaling);
  return sum.view(out_shape).to(y.scalar_type());
}

// peft's DoRA forward (DoraLinearLayer.forward), in the adapter's dtype. W is
// dequantized once: the base GEMM, the norm and, with dropout on, peft's second
// product dropout(x) W^T read it; the backward rebuilds it as for LoRA.
torch::Tensor LoraLinear::dora_forward(const torch::Tensor& x, bool training) const {
  torch::Tensor w;
  {
    torch::NoGradGuard no_grad;
    w = stored_weight(weight_);
  }
  const auto y = base_linear(weight_, x.to(compute_dtype_), w).to(x.scalar_type());
  const auto dtype = adapter_dtype(x);
  auto h = x.to(dtype);
  const auto y_adapter = y.to(dtype);
  auto base = y_adapter;
  if (training && lora_->dropout > 0) {
    h = adapter_dropout(h);
    base = base_linear(weight_, h, w);
  }
  const auto lora = torch::matmul(torch::matmul(h, lora_A_.to(dtype).t()), lora_B_.to(dtype).t());
  const auto scale = (magnitude_ / weight_norm(w)).to(dtype);  // m / ||W + s B A||, the norm detached
  return y_adapter.add((scale - 1) * base + scale * lora * lora_->scaling).to(y.scalar_type());
}

}  // namespace herd::model
