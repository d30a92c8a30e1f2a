// Fused element-wise kernels for a Llama decoder layer on the GPU (HERD_CUDA
// builds): each reads its inputs once and writes its outputs once, where the eager
// ops make several passes with float32 temporaries. They compute in float32 and
// round as transformers' bf16 path does where that is one more rounding (the
// normalized value before the norm's weight, silu before the product); otherwise
// they round once at the end.
//
// Device pointers, contiguous, 16-byte aligned; `stream` a cudaStream_t (null: the
// default stream). Each returns cudaSuccess (0), cudaErrorInvalidValue for a shape
// or alignment it does not take, or the launch's cudaError_t.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/dropout.h"
#include "kernels/float_type.h"

namespace herd::kernels {

// transformers' LlamaRMSNorm over rows of `cols` (cols % 8 == 0):
// y = w * round(x * rsqrt(mean(x^2) + eps)); w float32 [cols], x and y of `type`.
int rms_norm_cuda(const void* x, const float* w, size_t rows, size_t cols, float eps, void* y, FloatType type,
                  void* stream);
// Its input gradient (the weight is frozen): with r = rsqrt(mean(x^2) + eps),
// g' = g * w: dx = r * (g' - x r mean(g' x r)) + add, `add` (null: none) x's gradient
// from elsewhere (a residual connection), summed before the one rounding.
int rms_norm_backward_cuda(const void* grad, const void* x, const float* w, const void* add, size_t rows, size_t cols,
                           float eps, void* dx, FloatType type, void* stream);

// Rotary position embedding of x [batch, tokens, heads, head_dim] (head_dim % 16
// == 0) with cos and sin [cos_batch, tokens, head_dim] (cos_batch 1 or batch):
// y = x cos + rotate_half(x) sin, rotate_half(x) = cat(-x2, x1). With `transpose`,
// its adjoint (the input gradient from y's gradient): y = x cos + rotate_half^T(x sin).
int rotary_cuda(const void* x, const void* cos, const void* sin, size_t batch, size_t tokens, size_t heads,
                size_t head_dim, size_t cos_batch, bool transpose, void* y, FloatType type, void* stream);

// SwiGLU's product, y = round(silu(gate)) * up, over n elements (n % 8 == 0).
int silu_mul_cuda(const void* gate, const void* up, size_t n, void* y, FloatType type, void* stream);
// Its gradients from y's: d_gate = g up silu'(gate), d_up = g silu(gate).
int silu_mul_backward_cuda(const void* grad, const void* gate, const void* up, size_t n, void* d_gate, void* d_up,
                           FloatType type, void* stream);

// x's dropout under each of `count` (<= kMaxDropouts) draws (kernels/dropout.h),
// x read once: outs[i].out = x * keep_i * scale_i, rounded once, n elements of x's
// type. The backward of one such dropout is the same call on the gradient.
struct DropoutOut {
  DropoutDraw draw;
  void* out = nullptr;
};
constexpr int kMaxDropouts = 4;
int dropout_cuda(const void* x, size_t n, const DropoutOut* outs, int count, FloatType type, void* stream);

// One adapter's part of its input's gradient, (d_low @ a) under its dropout's mask
// (keep * scale; none where `dropout` is false): d_low [rows, r] and a [r, cols] of
// the kernel's type, r in [1, kMaxLoraRank]. The mask is regenerated from the draw
// that made the adapter's input, element e = row * cols + col.
struct LoraInputGrad {
  const void* d_low = nullptr;
  const void* a = nullptr;
  DropoutDraw draw;
  bool dropout = false;
  int r = 0;
};
constexpr int kMaxLoraInputGrads = 4;
constexpr int kMaxLoraRank = 64;
// dx [rows, cols] (cols % 8 == 0) += the sum of `count` (<= kMaxLoraInputGrads)
// such terms, computed in float32 and rounded once.
int lora_input_grad_cuda(const LoraInputGrad* terms, int count, size_t rows, size_t cols, void* dx, FloatType type,
                         void* stream);

// Cross-entropy of rows of `vocab` logits (vocab % 8 == 0) against int64 targets in
// [0, vocab), in float32 from the logits as stored: lse = logsumexp(x), loss = lse -
// x[target]; both float32 [rows].
int cross_entropy_cuda(const void* logits, const int64_t* targets, size_t rows, size_t vocab, float* loss, float* lse,
                       FloatType type, void* stream);
// d_logits = grad * (softmax(x) - onehot(target)), rounded once to `type`; grad
// float32 [rows].
int cross_entropy_backward_cuda(const void* logits, const int64_t* targets, const float* lse, const float* grad,
                                size_t rows, size_t vocab, void* d_logits, FloatType type, void* stream);

}  // namespace herd::kernels
