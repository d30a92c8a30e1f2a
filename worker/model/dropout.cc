#include "worker/model/dropout.h"

#include <algorithm>
#include <bit>
#include <mutex>

#include <ATen/CPUGeneratorImpl.h>
#ifdef HERD_CUDA
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/device.h"
#include "kernels/fused_cuda.h"
#include "worker/model/fused.h"
#endif

namespace herd::model {

namespace k = herd::kernels;

k::DropoutDraw draw_dropout(torch::Device device, double p) {
  TORCH_CHECK(p > 0 && p < 1, "dropout: p must be in (0, 1), got ", p);
  uint64_t seed = 0, offset = 0;
  if (device.is_cuda()) {
#ifdef HERD_CUDA
    at::Generator g = at::cuda::detail::getDefaultCUDAGenerator(device.has_index() ? device.index() : -1);
    std::lock_guard lock(g.mutex());
    // 4: one Philox block a counter, as torch's kernels count their offsets.
    const at::PhiloxCudaState state = at::check_generator<at::CUDAGeneratorImpl>(g)->philox_cuda_state(4);
    TORCH_CHECK(!state.captured_, "herd's LoRA dropout does not run inside a CUDA graph capture");
    seed = state.seed_.val;
    offset = state.offset_.val;
#else
    TORCH_CHECK(false, "dropout on ", device, " in a build without CUDA");
#endif
  } else {
    at::Generator g = torch::globalContext().defaultGenerator(device);
    std::lock_guard lock(g.mutex());
    seed = at::check_generator<at::CPUGeneratorImpl>(g)->random64();
  }
  return k::dropout_draw(seed, offset, p);
}

torch::Tensor dropout_mask(const k::DropoutDraw& d, const torch::Tensor& like) {
  auto mask = torch::empty(like.sizes(), torch::kBool);  // one byte each, 0 or 1
  k::dropout_mask(d, static_cast<size_t>(mask.numel()), reinterpret_cast<uint8_t*>(mask.data_ptr<bool>()));
  return mask.to(like.device());
}

std::vector<torch::Tensor> philox_dropouts(const torch::Tensor& x, const std::vector<k::DropoutDraw>& draws) {
  std::vector<torch::Tensor> out;
#ifdef HERD_CUDA
  if (const auto t = x.scalar_type();
      x.is_cuda() && (t == torch::kFloat32 || t == torch::kBFloat16 || t == torch::kFloat16)) {
    const c10::cuda::CUDAGuard guard(x.device());
    const auto xs = x.contiguous();
    for (size_t first = 0; first < draws.size(); first += k::kMaxDropouts) {
      std::vector<k::DropoutOut> outs;
      for (size_t i = first; i < std::min(draws.size(), first + k::kMaxDropouts); ++i) {
        out.push_back(torch::empty_like(xs));
        outs.push_back({draws[i], out.back().data_ptr()});
      }
      const int rc =
          k::dropout_cuda(xs.data_ptr(), static_cast<size_t>(xs.numel()), outs.data(), static_cast<int>(outs.size()),
                          kernel_type(t), c10::cuda::getCurrentCUDAStream().stream());
      TORCH_CHECK(rc == 0, "dropout kernel: ", kernels::cuda_error(rc));
    }
    return out;
  }
#endif
  // x * mask is x or a zero of x's sign; the one rounding is the product with the
  // scale, computed in float32 as the kernel does.
  for (const auto& d : draws) out.push_back(x * dropout_mask(d, x) * static_cast<double>(d.scale));
  return out;
}

namespace {

struct PhiloxDropout : public torch::autograd::Function<PhiloxDropout> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const std::vector<int64_t>& draw) {
    ctx->saved_data["draw"] = draw;
    return philox_dropouts(x, {draw_from_ints(draw)})[0];
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad) {
    const auto draw = draw_from_ints(ctx->saved_data["draw"].toIntVector());
    return {philox_dropouts(grad[0], {draw})[0], torch::Tensor()};
  }
};

}  // namespace

torch::Tensor philox_dropout(const torch::Tensor& x, const k::DropoutDraw& d) {
  return PhiloxDropout::apply(x, draw_to_ints(d));
}

std::vector<int64_t> draw_to_ints(const k::DropoutDraw& d) {
  return {std::bit_cast<int64_t>(d.seed), std::bit_cast<int64_t>(d.offset), d.keep_below,
          std::bit_cast<uint32_t>(d.scale)};
}

k::DropoutDraw draw_from_ints(const std::vector<int64_t>& ints, size_t at) {
  TORCH_CHECK(ints.size() >= at + 4, "draw_from_ints: too few integers");
  return {std::bit_cast<uint64_t>(ints[at]), std::bit_cast<uint64_t>(ints[at + 1]), static_cast<uint32_t>(ints[at + 2]),
          std::bit_cast<float>(static_cast<uint32_t>(ints[at + 3]))};
}

}  // namespace herd::model
