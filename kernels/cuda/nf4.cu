#include <type_traits>

#include "kernels/cuda/float_convert.cuh"
#include "kernels/nf4.h"
#include "kernels/nf4_cuda.h"

namespace herd::kernels {
namespace {

// The absmax of block b, decoded from the double quantization when there is one.
__device__ __forceinline__ float block_scale(const Nf4Source& s, const float* nested_map, size_t b) {
  if (s.absmax) return s.absmax[b];
  return __fadd_rn(__fmul_rn(nested_map[s.absmax_codes[b]], s.nested_absmax[b / kNestedBlockSize]), s.offset);
}

// Loads the code table (and the nested map) into shared memory.
__device__ __forceinline__ void load_tables(const Nf4Source& s, float* table, float* map) {
  for (unsigned i = threadIdx.x; i < 16; i += blockDim.x) table[i] = s.code_table[i];
  if (!s.absmax) {
    for (unsigned i = threadIdx.x; i < 256; i += blockDim.x) map[i] = s.nested_map[i];
  }
  __syncthreads();
}

// Stores 8 weights (16 bytes of bfloat16/float16, 32 of float32) at a 16-byte
// aligned address.
template <class Out>
__device__ __forceinline__ void store_values8(Out* dst, const Out (&values)[8]) {
  const auto* src = reinterpret_cast<const uint4*>(values);
  auto* d = reinterpret_cast<uint4*>(dst);
#pragma unroll
  for (size_t k = 0; k < 8 * sizeof(Out) / 16; ++k) d[k] = src[k];
}

// Items of 8 weights (4 packed bytes): item i of a warp is next to item i + 1, so a
// warp reads 128 contiguous bytes of codes and writes 512 contiguous bytes of bf16
// per item, both coalesced. Each thread takes kUnroll items a grid-stride apart,
// loading all of them before it converts any (loads in flight hide the latency).
constexpr int kUnroll = 4;

template <class Out>
__global__ void dequantize_vectorized(Nf4Source s, size_t items, Out* __restrict__ out) {
  __shared__ float table[16];
  __shared__ float map[256];
  load_tables(s, table, map);
  const auto* __restrict__ packed = reinterpret_cast<const uint32_t*>(s.packed);
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t base = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; base < items;
       base += stride * kUnroll) {
    uint32_t codes[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const size_t i = base + u * stride;
      codes[u] = i < items ? __ldg(packed + i) : 0;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const size_t i = base + u * stride;
      if (i >= items) break;
      const float scale = block_scale(s, map, i / 8);  // 8 weights an item, 64 a block
      __align__(16) Out values[8];
#pragma unroll
      for (int b = 0; b < 4; ++b) {  // byte b of the little-endian word is packed byte 4i + b
        const unsigned byte = (codes[u] >> (8 * b)) & 0xffu;
        values[2 * b] = convert<Out>(__fmul_rn(table[byte >> 4], scale));  // high nibble first
        values[2 * b + 1] = convert<Out>(__fmul_rn(table[byte & 15], scale));
      }
      store_values8(out + i * 8, values);
    }
  }
}

// The first layout, kept for the bench: one thread per 16 packed bytes (32 weights
// of one block), 16-byte loads, four 16-byte stores 64 bytes apart across a warp.
template <class Out>
__global__ void dequantize_wide(Nf4Source s, size_t chunks, Out* out) {
  __shared__ float table[16];
  __shared__ float map[256];
  load_tables(s, table, map);
  const auto* packed = reinterpret_cast<const uint4*>(s.packed);
  for (size_t c = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; c < chunks;
       c += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint4 v = packed[c];
    const float scale = block_scale(s, map, c / 2);  // 32 weights a chunk, 64 a block
    const auto* bytes = reinterpret_cast<const uint8_t*>(&v);
    __align__(16) Out values[32];
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      values[2 * i] = convert<Out>(__fmul_rn(table[bytes[i] >> 4], scale));  // high nibble first
      values[2 * i + 1] = convert<Out>(__fmul_rn(table[bytes[i] & 15], scale));
    }
    auto* dst = reinterpret_cast<uint4*>(out + c * 32);
    const auto* src = reinterpret_cast<const uint4*>(values);
#pragma unroll
    for (size_t k = 0; k < 32 * sizeof(Out) / 16; ++k) dst[k] = src[k];
  }
}

// One thread per weight, from `first` to n.
template <class Out>
__global__ void dequantize_scalar(Nf4Source s, size_t first, Out* out) {
  __shared__ float table[16];
  __shared__ float map[256];
  load_tables(s, table, map);
  for (size_t i = first + blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < s.n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint8_t byte = s.packed[i / 2];
    const int code = (i % 2 == 0) ? byte >> 4 : byte & 15;
    out[i] = convert<Out>(__fmul_rn(table[code], block_scale(s, map, i / kNf4BlockSize)));
  }
}

// y = x W^T for one row x, straight from the codes: one warp per output row, each
// lane taking items of 8 * kWords weights (kWords 4-byte words of codes: 16-byte
// loads of codes and of x when kWords is 4), two items in flight, coalesced across
// the warp; float32 products and sums, one shuffle reduction a row.
template <class T, int kWords>
__global__ void gemv(Nf4Source s, size_t rows, size_t cols, const T* __restrict__ x, T* __restrict__ y) {
  using Word = std::conditional_t<kWords == 4, uint4, uint32_t>;
  constexpr int kWeights = 8 * kWords, kInFlight = 2;
  __shared__ float table[16];
  __shared__ float map[256];
  load_tables(s, table, map);
  const unsigned lane = threadIdx.x % 32;
  const size_t row = blockIdx.x * static_cast<size_t>(blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const size_t items = cols / kWeights, first = row * items;  // items of this row: first .. first + items
  const auto* __restrict__ packed = reinterpret_cast<const Word*>(s.packed);
  float acc = 0;
  for (size_t base = lane; base < items; base += 32 * kInFlight) {
    Word codes[kInFlight];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const size_t i = base + 32 * u;
      codes[u] = i < items ? __ldg(packed + first + i) : Word{};
    }
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const size_t i = base + 32 * u;
      if (i >= items) break;
      const float scale = block_scale(s, map, (first + i) * kWeights / kNf4BlockSize);
      const auto* words = reinterpret_cast<const uint32_t*>(&codes[u]);
      const T* xs = x + i * kWeights;
#pragma unroll
      for (int w = 0; w < kWords; ++w) {
        float xv[8];
        if constexpr (kWords == 4) {
          load8(xs + 8 * w, xv);  // one 16-byte load (x is 16-byte aligned on this path)
        } else {
#pragma unroll
          for (int k = 0; k < 8; ++k) xv[k] = to_float(xs[8 * w + k]);
        }
#pragma unroll
        for (int b = 0; b < 4; ++b) {  // byte b of the little-endian word, high nibble first
          const unsigned byte = (words[w] >> (8 * b)) & 0xffu;
          acc += __fmul_rn(table[byte >> 4], scale) * xv[2 * b];
          acc += __fmul_rn(table[byte & 15], scale) * xv[2 * b + 1];
        }
      }
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_down_sync(0xffffffffu, acc, offset);
  if (lane == 0) y[row] = convert<T>(acc);
}

unsigned grid_for(size_t items, unsigned threads) {
  const size_t blocks = (items + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 8192 ? (blocks > 0 ? blocks : 1) : 8192);
}

template <class Out>
int launch(const Nf4Source& s, Out* out, cudaStream_t stream) {
  constexpr unsigned kThreads = 256;
  const bool aligned = reinterpret_cast<uintptr_t>(s.packed) % 4 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  const size_t items = aligned ? s.n / 8 : 0;
  if (items > 0) {
    const size_t threads_needed = (items + kUnroll - 1) / kUnroll;
    dequantize_vectorized<Out><<<grid_for(threads_needed, kThreads), kThreads, 0, stream>>>(s, items, out);
  }
  if (items * 8 < s.n) {
    dequantize_scalar<Out><<<grid_for(s.n - items * 8, kThreads), kThreads, 0, stream>>>(s, items * 8, out);
  }
  return static_cast<int>(cudaGetLastError());
}

template <class Out>
int launch_wide(const Nf4Source& s, Out* out, cudaStream_t stream) {
  constexpr unsigned kThreads = 256;
  const bool aligned = reinterpret_cast<uintptr_t>(s.packed) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  if (!aligned || s.n % 32 != 0) return static_cast<int>(cudaErrorInvalidValue);
  dequantize_wide<Out><<<grid_for(s.n / 32, kThreads), kThreads, 0, stream>>>(s, s.n / 32, out);
  return static_cast<int>(cudaGetLastError());
}

template <class T>
int launch_gemv(const Nf4Source& s, size_t rows, size_t cols, const T* x, T* y, cudaStream_t stream) {
  if (rows == 0) return 0;
  if (cols % 8 != 0 || s.n != rows * cols || reinterpret_cast<uintptr_t>(s.packed) % 4 != 0) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  constexpr unsigned kThreads = 256, kRowsPerBlock = kThreads / 32;
  const auto blocks = static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
  if (cols % 32 == 0 && reinterpret_cast<uintptr_t>(s.packed) % 16 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0) {
    gemv<T, 4><<<blocks, kThreads, 0, stream>>>(s, rows, cols, x, y);
  } else {
    gemv<T, 1><<<blocks, kThreads, 0, stream>>>(s, rows, cols, x, y);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int nf4_gemv_cuda(const Nf4Source& source, size_t out_features, size_t in_features, const void* x, void* y,
                  FloatType type, void* stream) {
  return dispatch_float(type, [&](auto zero) {
    using T = decltype(zero);
    return launch_gemv(source, out_features, in_features, static_cast<const T*>(x), static_cast<T*>(y),
                       static_cast<cudaStream_t>(stream));
  });
}

int nf4_dequantize_cuda_wide(const Nf4Source& source, void* out, FloatType type, void* stream) {
  return dispatch_float(type, [&](auto zero) {
    return launch_wide(source, static_cast<decltype(zero)*>(out), static_cast<cudaStream_t>(stream));
  });
}

int nf4_dequantize_cuda(const Nf4Source& source, void* out, FloatType type, void* stream) {
  if (source.n == 0) return 0;
  return dispatch_float(type, [&](auto zero) {
    return launch(source, static_cast<decltype(zero)*>(out), static_cast<cudaStream_t>(stream));
  });
}

}  // namespace herd::kernels
