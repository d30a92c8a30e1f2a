#include <cfloat>
#include <cstdint>

#include "kernels/cuda/float_convert.cuh"
#include "kernels/fused_cuda.h"

namespace herd::kernels {
namespace {

constexpr unsigned kThreads = 256;

// The sum of v over the block, in every thread. `partial` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float* partial) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < blockDim.x / 32 ? partial[lane] : 0.0f;
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  __syncthreads();  // partial may be used again
  return v;
}

// One block per row; each thread takes 8 columns at a time.
template <class T>
__global__ void rms_norm_kernel(const T* __restrict__ x, const float* __restrict__ w, size_t cols, float eps,
                                T* __restrict__ y) {
  __shared__ float partial[32];
  const T* xr = x + blockIdx.x * cols;
  T* yr = y + blockIdx.x * cols;
  float squares = 0;
  for (size_t c = threadIdx.x * 8; c < cols; c += blockDim.x * 8) {
    float v[8];
    load8(xr + c, v);
#pragma unroll
    for (int i = 0; i < 8; ++i) squares += v[i] * v[i];
  }
  const float r = rsqrtf(block_sum(squares, partial) / static_cast<float>(cols) + eps);
  for (size_t c = threadIdx.x * 8; c < cols; c += blockDim.x * 8) {
    float v[8], wv[8], out[8];
    load8(xr + c, v);
    load8(w + c, wv);
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = wv[i] * to_float(convert<T>(v[i] * r));
    store8(yr + c, out);
  }
}

template <class T>
__global__ void rms_norm_backward_kernel(const T* __restrict__ grad, const T* __restrict__ x,
                                         const float* __restrict__ w, const T* __restrict__ add, size_t cols, float eps,
                                         T* __restrict__ dx) {
  __shared__ float partial[32];
  const size_t row = blockIdx.x * cols;
  float squares = 0, dot = 0;  // sum x^2, sum g' x
  for (size_t c = threadIdx.x * 8; c < cols; c += blockDim.x * 8) {
    float v[8], g[8], wv[8];
    load8(x + row + c, v);
    load8(grad + row + c, g);
    load8(w + c, wv);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      squares += v[i] * v[i];
      dot += g[i] * wv[i] * v[i];
    }
  }
  const float n = static_cast<float>(cols);
  const float r = rsqrtf(block_sum(squares, partial) / n + eps);
  const float mean = block_sum(dot, partial) * r / n;  // mean(g' x r)
  for (size_t c = threadIdx.x * 8; c < cols; c += blockDim.x * 8) {
    float v[8], g[8], wv[8], out[8], more[8] = {};
    load8(x + row + c, v);
    load8(grad + row + c, g);
    load8(w + c, wv);
    if (add != nullptr) load8(add + row + c, more);
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = r * (g[i] * wv[i] - v[i] * r * mean) + more[i];
    store8(dx + row + c, out);
  }
}

unsigned grid_for(size_t items) {
  const size_t blocks = (items + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 16384 ? (blocks > 0 ? blocks : 1) : 16384);
}

// Each item is 8 pairs (j, j + D/2) of one head of one token.
template <class T>
__global__ void rotary_kernel(const T* __restrict__ x, const T* __restrict__ cos, const T* __restrict__ sin,
                              size_t items, size_t tokens, size_t heads, size_t head_dim, bool per_batch,
                              bool transpose, T* __restrict__ y) {
  const size_t half = head_dim / 2, per_head = half / 8;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < items;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t head_row = i / per_head, j = (i % per_head) * 8;
    const size_t token_row = head_row / heads;  // batch * tokens + token
    const size_t angle_row = (per_batch ? token_row : token_row % tokens) * head_dim;
    const size_t base = head_row * head_dim;
    float x1[8], x2[8], c1[8], c2[8], s1[8], s2[8], y1[8], y2[8];
    load8(x + base + j, x1);
    load8(x + base + half + j, x2);
    load8(cos + angle_row + j, c1);
    load8(cos + angle_row + half + j, c2);
    load8(sin + angle_row + j, s1);
    load8(sin + angle_row + half + j, s2);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      if (transpose) {
        y1[k] = x1[k] * c1[k] + x2[k] * s2[k];
        y2[k] = x2[k] * c2[k] - x1[k] * s1[k];
      } else {
        y1[k] = x1[k] * c1[k] - x2[k] * s1[k];
        y2[k] = x2[k] * c2[k] + x1[k] * s2[k];
      }
    }
    store8(y + base + j, y1);
    store8(y + base + half + j, y2);
  }
}

__device__ __forceinline__ float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }

template <class T>
__global__ void silu_mul_kernel(const T* __restrict__ gate, const T* __restrict__ up, size_t items, T* __restrict__ y) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < items;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    float g[8], u[8], out[8];
    load8(gate + i * 8, g);
    load8(up + i * 8, u);
#pragma unroll
    for (int k = 0; k < 8; ++k) out[k] = to_float(convert<T>(g[k] * sigmoid(g[k]))) * u[k];
    store8(y + i * 8, out);
  }
}

template <class T>
__global__ void silu_mul_backward_kernel(const T* __restrict__ grad, const T* __restrict__ gate,
                                         const T* __restrict__ up, size_t items, T* __restrict__ d_gate,
                                         T* __restrict__ d_up) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < items;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    float d[8], g[8], u[8], dg[8], du[8];
    load8(grad + i * 8, d);
    load8(gate + i * 8, g);
    load8(up + i * 8, u);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const float s = sigmoid(g[k]);
      du[k] = d[k] * to_float(convert<T>(g[k] * s));
      dg[k] = d[k] * u[k] * s * (1.0f + g[k] * (1.0f - s));
    }
    store8(d_gate + i * 8, dg);
    store8(d_up + i * 8, du);
  }
}

// Cross-entropy: one block per row, a running (max, sum of exp(x - max)) per thread,
// combined across the block.
struct MaxSum {
  float max, sum;
};

__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.max, b.max);
  return {m, a.sum * expf(a.max - m) + b.sum * expf(b.max - m)};
}

template <class T>
__global__ void cross_entropy_kernel(const T* __restrict__ logits, const int64_t* __restrict__ targets, size_t vocab,
                                     float* __restrict__ loss, float* __restrict__ lse) {
  __shared__ MaxSum partial[32];
  const T* x = logits + blockIdx.x * vocab;
  MaxSum acc{-FLT_MAX, 0.0f};  // finite: combining two empty ones gives 0, not NaN
  for (size_t c = threadIdx.x * 8; c < vocab; c += blockDim.x * 8) {
    float v[8];
    load8(x + c, v);
    float m = v[0];
#pragma unroll
    for (int i = 1; i < 8; ++i) m = fmaxf(m, v[i]);
    float s = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) s += expf(v[i] - m);
    acc = combine(acc, {m, s});
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    acc = combine(acc, {__shfl_xor_sync(0xffffffffu, acc.max, offset), __shfl_xor_sync(0xffffffffu, acc.sum, offset)});
  }
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) partial[warp] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    MaxSum all = partial[0];
    for (unsigned w = 1; w < blockDim.x / 32; ++w) all = combine(all, partial[w]);
    const float l = all.max + logf(all.sum);
    lse[blockIdx.x] = l;
    loss[blockIdx.x] = l - to_float(x[targets[blockIdx.x]]);
  }
}

template <class T>
__global__ void cross_entropy_backward_kernel(const T* __restrict__ logits, const int64_t* __restrict__ targets,
                                              const float* __restrict__ lse, const float* __restrict__ grad,
                                              size_t vocab, T* __restrict__ d_logits) {
  const size_t row = blockIdx.x;
  const float l = lse[row], g = grad[row];
  const int64_t target = targets[row];
  for (size_t c = threadIdx.x * 8; c < vocab; c += blockDim.x * 8) {
    float v[8], d[8];
    load8(logits + row * vocab + c, v);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float p = expf(v[i] - l);
      d[i] = g * (static_cast<int64_t>(c) + i == target ? p - 1.0f : p);
    }
    store8(d_logits + row * vocab + c, d);
  }
}

// Whether elements e .. e + 7 (e % 8 == 0) of the draw are kept, in bits 0..7.
__device__ __forceinline__ unsigned keep8(const DropoutDraw& d, size_t e) {
  return dropout_keep4(d, e / 4) | dropout_keep4(d, e / 4 + 1) << 4;
}

struct DropoutOuts {
  DropoutOut out[kMaxDropouts];
  int count;
};

// Each item is 8 consecutive elements, x read once for every draw; kVector: 16-byte
// loads and stores (n % 8 == 0, every pointer 16-byte aligned), else one at a time.
template <class T, bool kVector>
__global__ void dropout_kernel(const T* __restrict__ x, size_t n, DropoutOuts outs) {
  const size_t items = (n + 7) / 8;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < items;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t e = i * 8;
    float v[8];
    if (kVector) {
      load8(x + e, v);
    } else {
#pragma unroll
      for (int k = 0; k < 8; ++k) v[k] = e + k < n ? to_float(x[e + k]) : 0.0f;
    }
    for (int t = 0; t < outs.count; ++t) {
      const DropoutOut& o = outs.out[t];
      const unsigned keep = keep8(o.draw, e);
      float y[8];
#pragma unroll
      for (int k = 0; k < 8; ++k) y[k] = v[k] * ((keep >> k) & 1u ? o.draw.scale : 0.0f);
      T* out = static_cast<T*>(o.out) + e;
      if (kVector) {
        store8(out, y);
      } else {
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          if (e + k < n) out[k] = convert<T>(y[k]);
        }
      }
    }
  }
}

struct LoraInputGrads {
  LoraInputGrad term[kMaxLoraInputGrads];
  int count;
};

// Each item is 8 consecutive columns of one row: dx's values are read once and
// written once, each term's product is formed in registers (r products a value).
template <class T>
__global__ void lora_input_grad_kernel(LoraInputGrads terms, size_t items, size_t cols, T* __restrict__ dx) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < items;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t e = i * 8, row = e / cols, col = e % cols;
    float sum[8] = {};
    for (int t = 0; t < terms.count; ++t) {
      const LoraInputGrad& term = terms.term[t];
      const T* d_low = static_cast<const T*>(term.d_low) + row * term.r;
      const T* a = static_cast<const T*>(term.a) + col;
      float part[8] = {};
      for (int j = 0; j < term.r; ++j) {
        const float d = to_float(d_low[j]);
        float av[8];
        load8(a + j * cols, av);
#pragma unroll
        for (int k = 0; k < 8; ++k) part[k] += d * av[k];
      }
      if (term.dropout) {
        const unsigned keep = keep8(term.draw, e);
#pragma unroll
        for (int k = 0; k < 8; ++k) sum[k] += part[k] * ((keep >> k) & 1u ? term.draw.scale : 0.0f);
      } else {
#pragma unroll
        for (int k = 0; k < 8; ++k) sum[k] += part[k];
      }
    }
    __align__(16) T raw[8];  // dx is written here too: a plain load, not load8's read-only one
#pragma unroll
    for (int k = 0; k < static_cast<int>(8 * sizeof(T) / 16); ++k) {
      reinterpret_cast<uint4*>(raw)[k] = reinterpret_cast<const uint4*>(dx + e)[k];
    }
    float out[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) out[k] = to_float(raw[k]) + sum[k];
    store8(dx + e, out);
  }
}

bool aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

int done() { return static_cast<int>(cudaGetLastError()); }
constexpr int kInvalid = static_cast<int>(cudaErrorInvalidValue);

}  // namespace

int rms_norm_cuda(const void* x, const float* w, size_t rows, size_t cols, float eps, void* y, FloatType type,
                  void* stream) {
  if (cols % 8 != 0 || !aligned(x) || !aligned(w) || !aligned(y)) return kInvalid;
  if (rows == 0) return 0;
  return dispatch_float(type, [&](auto zero) {
    using T = decltype(zero);
    rms_norm_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(x), w, cols, eps, static_cast<T*>(y));
    return done();
  });
}

int rms_norm_backward_cuda(const void* grad, const void* x, const float* w, const void* add, size_t rows, size_t cols,
                           float eps, void* dx, FloatType type, void* stream) {
  if (cols % 8 != 0 || !aligned(grad) || !aligned(x) || !aligned(w) || !aligned(add) || !aligned(dx)) return kInvalid;
  if (rows == 0) return 0;
  return dispatch_float(type, [&](auto zero) {
    using T = decltype(zero);
    rms_norm_backward_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(grad), static_cast<const T*>(x), w, static_cast<const T*>(add), cols, eps,
        static_cast<T*>(dx));
    return done();
  });
}

int rotary_cuda(const void* x, const void* cos, const void* sin, size_t batch, size_t tokens, size_t heads,
                size_t head_dim, size_t cos_batch, bool transpose, void* y, FloatType type, void* stream) {
  if (head_dim % 16 != 0 || (cos_batch != 1 && cos_batch != batch) || !aligned(x) || !aligned(cos) || !aligned(sin) ||
      !aligned(y)) {
    return kInvalid;
  }
  const size_t items = batch * tokens * heads * (head_dim / 16);
  if (items == 0) return 0;
  return dispatch_float(type, [&](auto zero) {
    using T = decltype(zero);
    rotary_kernel<T><<<grid_for(items), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(x), static_cast<const T*>(cos), static_cast<const T*>(sin), items, tokens, heads,
        head_dim, cos_batch != 1, transpose, static_cast<T*>(y));
    return done();
  });
}

int silu_mul_cuda(const void* gate, const void* up, size_t n, void* y, FloatType type, void* stream) {
  if (n % 8 != 0 || !aligned(gate) || !aligned(up) || !aligned(y)) return kInvalid;
  if (n == 0) return 0;
  return dispatch_float(type, [&](auto zero) {
    using T = decltype(zero);
    silu_mul_kernel<T><<<grid_for(n / 8), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(gate), static_cast<const T*>(up), n / 8, static_cast<T*>(y));
    return done();
  });
}

int silu_mul_backward_cuda(const void* grad, const void* gate, const void* up, size_t n, void* d_gate, void* d_up,
                           FloatType type, void* stream) {
  if (n % 8 != 0 || !aligned(grad) || !aligned(gate) || !aligned(up) || !aligned(d_gate) || !aligned(d_up)) {
    return kInvalid;
  }
  if (n == 0) return 0;
  return dispatch_float(type, [&](auto zero) {
    using T = decltype(zero);
    silu_mul_backward_kernel<T><<<grid_for(n / 8), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(grad), static_cast<const T*>(gate), static_cast<const T*>(up), n / 8,
        static_cast<T*>(d_gate), static_cast<T*>(d_up));
    return done();
  });
}

int lora_input_grad_cuda(const LoraInputGrad* terms, int count, size_t rows, size_t cols, void* dx, FloatType type,
                         void* stream) {
  if (count < 0 || count > kMaxLoraInputGrads || cols % 8 != 0 || !aligned(dx)) return kInvalid;
  LoraInputGrads all{};
  all.count = count;
  for (int t = 0; t < count; ++t) {
    const LoraInputGrad& term = terms[t];
    if (term.r < 1 || term.r > kMaxLoraRank || term.d_low == nullptr || term.a == nullptr || !aligned(term.a)) {
      return kInvalid;
    }
    all.term[t] = term;
  }
  const size_t items = rows * cols / 8;
  if (items == 0 || count == 0) return 0;
  return dispatch_float(type, [&](auto zero) {
    using T = decltype(zero);
    lora_input_grad_kernel<T>
        <<<grid_for(items), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(all, items, cols, static_cast<T*>(dx));
    return done();
  });
}

int dropout_cuda(const void* x, size_t n, const DropoutOut* outs, int count, FloatType type, void* stream) {
  if (count < 0 || count > kMaxDropouts || x == nullptr) return kInvalid;
  DropoutOuts all{};
  all.count = count;
  bool vector = n % 8 == 0 && aligned(x);
  for (int t = 0; t < count; ++t) {
    if (outs[t].out == nullptr) return kInvalid;
    vector = vector && aligned(outs[t].out);
    all.out[t] = outs[t];
  }
  if (n == 0 || count == 0) return 0;
  const unsigned grid = grid_for((n + 7) / 8);
  const auto s = static_cast<cudaStream_t>(stream);
  return dispatch_float(type, [&](auto zero) {
    using T = decltype(zero);
    if (vector) {
      dropout_kernel<T, true><<<grid, kThreads, 0, s>>>(static_cast<const T*>(x), n, all);
    } else {
      dropout_kernel<T, false><<<grid, kThreads, 0, s>>>(static_cast<const T*>(x), n, all);
    }
    return done();
  });
}

int cross_entropy_cuda(const void* logits, const int64_t* targets, size_t rows, size_t vocab, float* loss, float* lse,
                       FloatType type, void* stream) {
  if (vocab % 8 != 0 || vocab == 0 || !aligned(logits)) return kInvalid;
  if (rows == 0) return 0;
  return dispatch_float(type, [&](auto zero) {
    using T = decltype(zero);
    cross_entropy_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(logits), targets, vocab, loss, lse);
    return done();
  });
}

int cross_entropy_backward_cuda(const void* logits, const int64_t* targets, const float* lse, const float* grad,
                                size_t rows, size_t vocab, void* d_logits, FloatType type, void* stream) {
  if (vocab % 8 != 0 || !aligned(logits) || !aligned(d_logits)) return kInvalid;
  if (rows == 0) return 0;
  return dispatch_float(type, [&](auto zero) {
    using T = decltype(zero);
    cross_entropy_backward_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(logits), targets, lse, grad, vocab, static_cast<T*>(d_logits));
    return done();
  });
}

}  // namespace herd::kernels
