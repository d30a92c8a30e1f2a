// NF4 dequantization on the GPU (HERD_CUDA builds), bit-identical to the CPU
// reference in nf4.h: every product is rounded to float32 on its own (no fused
// multiply-add), double-quantized absmax is decoded in the same kernel as
// fl(fl(map[code] * nested_absmax[block / 256]) + offset), and bfloat16/float16
// round to nearest even. Each thread of a warp takes 8 consecutive weights (4
// bytes of codes, 16 of bf16 out) next to its neighbour's, so loads and stores are
// coalesced, with 16-byte stores when the codes are 4-byte and the output 16-byte
// aligned; a scalar kernel otherwise and for the last n % 8 weights.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/float_type.h"

namespace herd::kernels {

// Device pointers. Plain absmax: `absmax` (float32 per 64 weights), the rest null.
// Double quantization: `absmax` null, `absmax_codes` (uint8 per 64),
// `nested_absmax` (float32 per 256 blocks), `offset`, `nested_map` (float32 [256]).
// `code_table`: float32 [16]. `stream`: a cudaStream_t (null: the default stream).
// Returns cudaSuccess (0) or the launch's cudaError_t.
struct Nf4Source {
  const uint8_t* packed = nullptr;
  size_t n = 0;
  const float* absmax = nullptr;
  const uint8_t* absmax_codes = nullptr;
  const float* nested_absmax = nullptr;
  float offset = 0;
  const float* nested_map = nullptr;
  const float* code_table = nullptr;
};
int nf4_dequantize_cuda(const Nf4Source& source, void* out, FloatType type, void* stream);
// y = x W^T for one row x [in_features] (batch-1 decoding), W [out_features,
// in_features] the NF4 weight of `source` (n = out * in), without materializing W:
// each weight is decoded as the dequantize kernel decodes it (float32) and
// multiplied and summed in float32; x and y [out_features] are of `type`. Needs
// in_features % 8 == 0 and the codes 4-byte aligned (else cudaErrorInvalidValue).
int nf4_gemv_cuda(const Nf4Source& source, size_t out_features, size_t in_features, const void* x, void* y,
                  FloatType type, void* stream);
// The first layout, for the bench's comparison: one thread per 16 bytes of codes
// (16-byte loads; a warp's stores 64 bytes apart). Needs both buffers 16-byte
// aligned and n % 32 == 0 (else cudaErrorInvalidValue).
int nf4_dequantize_cuda_wide(const Nf4Source& source, void* out, FloatType type, void* stream);

}  // namespace herd::kernels
