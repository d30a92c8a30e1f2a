// Conversions between float32 (what the kernels compute in) and the stored types,
// rounding to nearest even; 16-byte-aligned loads and stores of 8 values; a
// dispatch from FloatType to the device type.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/float_type.h"

namespace herd::kernels {

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

template <class T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
__device__ __forceinline__ float to_float<__half>(__half v) {
  return __half2float(v);
}

// 8 consecutive values (16 bytes of bf16/fp16, 32 of float32) to or from float32.
template <class T>
__device__ __forceinline__ void load8(const T* p, float (&f)[8]) {
  __align__(16) T v[8];
  const auto* src = reinterpret_cast<const uint4*>(p);
  auto* dst = reinterpret_cast<uint4*>(v);
#pragma unroll
  for (int k = 0; k < static_cast<int>(8 * sizeof(T) / 16); ++k) dst[k] = __ldg(src + k);
#pragma unroll
  for (int i = 0; i < 8; ++i) f[i] = to_float(v[i]);
}

template <class T>
__device__ __forceinline__ void store8(T* p, const float (&f)[8]) {
  __align__(16) T v[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = convert<T>(f[i]);
  const auto* src = reinterpret_cast<const uint4*>(v);
  auto* dst = reinterpret_cast<uint4*>(p);
#pragma unroll
  for (int k = 0; k < static_cast<int>(8 * sizeof(T) / 16); ++k) dst[k] = src[k];
}

// f(T{}) with T the device type of `type`; cudaErrorInvalidValue for an unknown one.
template <class F>
int dispatch_float(FloatType type, F&& f) {
  switch (type) {
    case FloatType::kFloat32:
      return f(float{});
    case FloatType::kBFloat16:
      return f(__nv_bfloat16{});
    case FloatType::kFloat16:
      return f(__half{});
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace herd::kernels
