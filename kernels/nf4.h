// NF4 as bitsandbytes stores it: blocks of 64 consecutive elements of the
// row-major weight, one float32 absmax per block, 4-bit codes into the 16-value NF4
// table, the first element of each pair in the HIGH nibble. Double quantization
// stores the absmax as 8-bit codes into the signed "dynamic" map, per block of 256,
// around their float32 mean. Pure compute on raw buffers.
#pragma once

#include <cstddef>
#include <cstdint>

namespace herd::kernels {

inline constexpr size_t kNf4BlockSize = 64;
inline constexpr size_t kNestedBlockSize = 256;

// bitsandbytes' NF4 table, code 0..15.
extern const float kNf4Codes[16];
// The 15 decision thresholds of bitsandbytes' NF4 quantizer (the midpoints between
// adjacent codes, as its kernels write them): a value's code is the number of
// thresholds strictly below it, so a tie goes to the lower code.
extern const float kNf4Thresholds[15];
// bitsandbytes' signed 8-bit dynamic map (create_dynamic_map(signed=True)), ascending.
extern const float kDynamicMap[256];

inline constexpr size_t nf4_packed_bytes(size_t n) { return (n + 1) / 2; }
inline constexpr size_t nf4_blocks(size_t n) { return (n + kNf4BlockSize - 1) / kNf4BlockSize; }
inline constexpr size_t nested_blocks(size_t nblocks) { return (nblocks + kNestedBlockSize - 1) / kNestedBlockSize; }

// Quantizes n floats into nf4_packed_bytes(n) bytes and nf4_blocks(n) absmax values.
// absmax ignores NaN; values are multiplied by the float32 reciprocal of absmax; an
// all-zero block packs to 0x00; the last partial block is zero-filled (an odd n's
// final low nibble is code 7).
void nf4_quantize(const float* x, size_t n, uint8_t* packed, float* absmax);

// Dequantizes into float32 or bfloat16 (raw bits, round to nearest even):
// out[i] = code_table[nibble(i)] * absmax[i / 64]. `code_table` is the checkpoint's
// quant_map (normally kNf4Codes). Multi-threaded for large n.
void nf4_dequantize(const uint8_t* packed, const float* absmax, size_t n, float* out,
                    const float* code_table = kNf4Codes);
void nf4_dequantize_bf16(const uint8_t* packed, const float* absmax, size_t n, uint16_t* out,
                         const float* code_table = kNf4Codes);

// Double quantization of n absmax values: offset = their float32 mean; then
// (absmax - offset) per block of 256: nested_absmax = max |v|, code = the dynamic
// map's nearest entry to v * (1 / nested_absmax) (ties to the even index, as
// bitsandbytes' binary search decides). codes: n bytes; nested: nested_blocks(n).
void absmax_quantize(const float* absmax, size_t n, uint8_t* codes, float* nested_absmax, float* offset);

// absmax[i] = fl(fl(map[codes[i]] * nested_absmax[i / 256]) + offset).
void absmax_dequantize(const uint8_t* codes, size_t n, const float* nested_absmax, float offset, float* absmax,
                       const float* map = kDynamicMap);

// float32 -> bfloat16 bits, round to nearest even (NaN stays NaN).
uint16_t float_to_bf16(float f);
float bf16_to_float(uint16_t b);

}  // namespace herd::kernels
