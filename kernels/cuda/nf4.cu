#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/nf4.h"
#include "kernels/nf4_cuda.h"

namespace herd::kernels {
namespace {

template <class Out>
__device__ __forceinline__ Out convert(float x);
template <>
__device__ __forceinline__ float convert<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 convert<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half convert<__half>(float x) {
  return __float2half_rn(x);
}

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

// One thread per 16 packed bytes: 32 weights of one block.
template <class Out>
__global__ void dequantize_vectorized(Nf4Source s, size_t chunks, Out* out) {
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

unsigned grid_for(size_t items, unsigned threads) {
  const size_t blocks = (items + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 8192 ? (blocks > 0 ? blocks : 1) : 8192);
}

template <class Out>
int launch(const Nf4Source& s, Out* out, cudaStream_t stream) {
  constexpr unsigned kThreads = 256;
  const bool aligned = reinterpret_cast<uintptr_t>(s.packed) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  const size_t chunks = aligned ? s.n / 32 : 0;
  if (chunks > 0) dequantize_vectorized<Out><<<grid_for(chunks, kThreads), kThreads, 0, stream>>>(s, chunks, out);
  if (chunks * 32 < s.n) {
    dequantize_scalar<Out><<<grid_for(s.n - chunks * 32, kThreads), kThreads, 0, stream>>>(s, chunks * 32, out);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int nf4_dequantize_cuda(const Nf4Source& source, void* out, Nf4Out type, void* stream) {
  if (source.n == 0) return 0;
  auto* s = static_cast<cudaStream_t>(stream);
  switch (type) {
    case Nf4Out::kFloat32: return launch(source, static_cast<float*>(out), s);
    case Nf4Out::kBFloat16: return launch(source, static_cast<__nv_bfloat16*>(out), s);
    case Nf4Out::kFloat16: return launch(source, static_cast<__half*>(out), s);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace herd::kernels
