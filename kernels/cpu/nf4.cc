#include "kernels/nf4.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "kernels/cpu/parallel.h"

namespace herd::kernels {

const float kNf4Codes[16] = {-1.0f,
                             -0.6961928009986877f,
                             -0.5250730514526367f,
                             -0.39491748809814453f,
                             -0.28444138169288635f,
                             -0.18477343022823334f,
                             -0.09105003625154495f,
                             0.0f,
                             0.07958029955625534f,
                             0.16093020141124725f,
                             0.24611230194568634f,
                             0.33791524171829224f,
                             0.44070982933044434f,
                             0.5626170039176941f,
                             0.7229568362236023f,
                             1.0f};

const float kNf4Thresholds[15] = {
    -0.8480964004993439f,  -0.6106329262256622f,   -0.4599952697753906f, -0.33967943489551544f, -0.23460740596055984f,
    -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f, 0.1202552504837513f,   0.2035212516784668f,
    0.2920137718319893f,   0.3893125355243683f,    0.5016634166240692f,  0.6427869200706482f,   0.8614784181118011f};

// The float32 values bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7)
// returns (it builds them with torch.linspace in float32; this table is what that
// gives with torch >= 2, checked against bitsandbytes by tests/oracle).
const float kDynamicMap[256] = {
    -0x1.fc66660000000p-1f,  -0x1.f533340000000p-1f,  -0x1.ee00000000000p-1f,  -0x1.e6cccc0000000p-1f,
    -0x1.df999a0000000p-1f,  -0x1.d866660000000p-1f,  -0x1.d133340000000p-1f,  -0x1.ca00000000000p-1f,
    -0x1.c2cccc0000000p-1f,  -0x1.bb999a0000000p-1f,  -0x1.b466660000000p-1f,  -0x1.ad33340000000p-1f,
    -0x1.a600000000000p-1f,  -0x1.9ecccc0000000p-1f,  -0x1.97999a0000000p-1f,  -0x1.9066660000000p-1f,
    -0x1.8933340000000p-1f,  -0x1.8200000000000p-1f,  -0x1.7acccc0000000p-1f,  -0x1.73999a0000000p-1f,
    -0x1.6c66680000000p-1f,  -0x1.6533340000000p-1f,  -0x1.5e00000000000p-1f,  -0x1.56cccc0000000p-1f,
    -0x1.4f999a0000000p-1f,  -0x1.4866680000000p-1f,  -0x1.4133340000000p-1f,  -0x1.3a00000000000p-1f,
    -0x1.32cccc0000000p-1f,  -0x1.2b999a0000000p-1f,  -0x1.2466680000000p-1f,  -0x1.1d33340000000p-1f,
    -0x1.1600000000000p-1f,  -0x1.0ecccc0000000p-1f,  -0x1.0799980000000p-1f,  -0x1.0066660000000p-1f,
    -0x1.f266640000000p-2f,  -0x1.e400000000000p-2f,  -0x1.d599980000000p-2f,  -0x1.c733340000000p-2f,
    -0x1.b8cccc0000000p-2f,  -0x1.aa66660000000p-2f,  -0x1.9c00000000000p-2f,  -0x1.8d99980000000p-2f,
    -0x1.7f33340000000p-2f,  -0x1.70cccc0000000p-2f,  -0x1.6266660000000p-2f,  -0x1.5400000000000p-2f,
    -0x1.4599980000000p-2f,  -0x1.3733340000000p-2f,  -0x1.28cccc0000000p-2f,  -0x1.1a66680000000p-2f,
    -0x1.0c00000000000p-2f,  -0x1.fb33320000000p-3f,  -0x1.de66660000000p-3f,  -0x1.c1999a0000000p-3f,
    -0x1.a4cccc0000000p-3f,  -0x1.8800000000000p-3f,  -0x1.6b33340000000p-3f,  -0x1.4e66660000000p-3f,
    -0x1.31999a0000000p-3f,  -0x1.14cccc0000000p-3f,  -0x1.f000000000000p-4f,  -0x1.b666680000000p-4f,
    -0x1.93d70a0000000p-4f,  -0x1.8851ee0000000p-4f,  -0x1.7cccce0000000p-4f,  -0x1.7147ae0000000p-4f,
    -0x1.65c2900000000p-4f,  -0x1.5a3d700000000p-4f,  -0x1.4eb8540000000p-4f,  -0x1.4333340000000p-4f,
    -0x1.37ae140000000p-4f,  -0x1.2c28f60000000p-4f,  -0x1.20a3d60000000p-4f,  -0x1.151eba0000000p-4f,
    -0x1.09999a0000000p-4f,  -0x1.fc28f60000000p-5f,  -0x1.e51eba0000000p-5f,  -0x1.ce147a0000000p-5f,
    -0x1.b70a3e0000000p-5f,  -0x1.a000000000000p-5f,  -0x1.88f5c20000000p-5f,  -0x1.71eb860000000p-5f,
    -0x1.5ae1460000000p-5f,  -0x1.43d70a0000000p-5f,  -0x1.2cccce0000000p-5f,  -0x1.15c2900000000p-5f,
    -0x1.fd70a40000000p-6f,  -0x1.cf5c2a0000000p-6f,  -0x1.a147ae0000000p-6f,  -0x1.7333340000000p-6f,
    -0x1.451eba0000000p-6f,  -0x1.170a3e0000000p-6f,  -0x1.d1eb860000000p-7f,  -0x1.75c2900000000p-7f,
    -0x1.3e76c80000000p-7f,  -0x1.2c08300000000p-7f,  -0x1.19999a0000000p-7f,  -0x1.072b020000000p-7f,
    -0x1.e978d40000000p-8f,  -0x1.c49ba60000000p-8f,  -0x1.9fbe760000000p-8f,  -0x1.7ae1480000000p-8f,
    -0x1.56041a0000000p-8f,  -0x1.3126e80000000p-8f,  -0x1.0c49ba0000000p-8f,  -0x1.ced9140000000p-9f,
    -0x1.851eb80000000p-9f,  -0x1.3b645a0000000p-9f,  -0x1.e353f80000000p-10f, -0x1.4fdf3a0000000p-10f,
    -0x1.eecbfe0000000p-11f, -0x1.b3d07c0000000p-11f, -0x1.78d5000000000p-11f, -0x1.3dd9820000000p-11f,
    -0x1.02de020000000p-11f, -0x1.8fc5060000000p-12f, -0x1.19ce0a0000000p-12f, -0x1.47ae160000000p-13f,
    -0x1.743e960000000p-14f, -0x1.15df660000000p-14f, -0x1.6f00680000000p-15f, -0x1.64840c0000000p-16f,
    -0x1.040bfe0000000p-17f, -0x1.b435280000000p-19f, -0x1.27476e0000000p-21f, 0x0p+0f,
    0x1.27476e0000000p-21f,  0x1.b435280000000p-19f,  0x1.040bfe0000000p-17f,  0x1.64840c0000000p-16f,
    0x1.6f00680000000p-15f,  0x1.15df660000000p-14f,  0x1.743e960000000p-14f,  0x1.47ae160000000p-13f,
    0x1.19ce0a0000000p-12f,  0x1.8fc5060000000p-12f,  0x1.02de020000000p-11f,  0x1.3dd9820000000p-11f,
    0x1.78d5000000000p-11f,  0x1.b3d07c0000000p-11f,  0x1.eecbfe0000000p-11f,  0x1.4fdf3a0000000p-10f,
    0x1.e353f80000000p-10f,  0x1.3b645a0000000p-9f,   0x1.851eb80000000p-9f,   0x1.ced9140000000p-9f,
    0x1.0c49ba0000000p-8f,   0x1.3126e80000000p-8f,   0x1.56041a0000000p-8f,   0x1.7ae1480000000p-8f,
    0x1.9fbe760000000p-8f,   0x1.c49ba60000000p-8f,   0x1.e978d40000000p-8f,   0x1.072b020000000p-7f,
    0x1.19999a0000000p-7f,   0x1.2c08300000000p-7f,   0x1.3e76c80000000p-7f,   0x1.75c2900000000p-7f,
    0x1.d1eb860000000p-7f,   0x1.170a3e0000000p-6f,   0x1.451eba0000000p-6f,   0x1.7333340000000p-6f,
    0x1.a147ae0000000p-6f,   0x1.cf5c2a0000000p-6f,   0x1.fd70a40000000p-6f,   0x1.15c2900000000p-5f,
    0x1.2cccce0000000p-5f,   0x1.43d70a0000000p-5f,   0x1.5ae1460000000p-5f,   0x1.71eb860000000p-5f,
    0x1.88f5c20000000p-5f,   0x1.a000000000000p-5f,   0x1.b70a3e0000000p-5f,   0x1.ce147a0000000p-5f,
    0x1.e51eba0000000p-5f,   0x1.fc28f60000000p-5f,   0x1.09999a0000000p-4f,   0x1.151eba0000000p-4f,
    0x1.20a3d60000000p-4f,   0x1.2c28f60000000p-4f,   0x1.37ae140000000p-4f,   0x1.4333340000000p-4f,
    0x1.4eb8540000000p-4f,   0x1.5a3d700000000p-4f,   0x1.65c2900000000p-4f,   0x1.7147ae0000000p-4f,
    0x1.7cccce0000000p-4f,   0x1.8851ee0000000p-4f,   0x1.93d70a0000000p-4f,   0x1.b666680000000p-4f,
    0x1.f000000000000p-4f,   0x1.14cccc0000000p-3f,   0x1.31999a0000000p-3f,   0x1.4e66660000000p-3f,
    0x1.6b33340000000p-3f,   0x1.8800000000000p-3f,   0x1.a4cccc0000000p-3f,   0x1.c1999a0000000p-3f,
    0x1.de66660000000p-3f,   0x1.fb33320000000p-3f,   0x1.0c00000000000p-2f,   0x1.1a66680000000p-2f,
    0x1.28cccc0000000p-2f,   0x1.3733340000000p-2f,   0x1.4599980000000p-2f,   0x1.5400000000000p-2f,
    0x1.6266660000000p-2f,   0x1.70cccc0000000p-2f,   0x1.7f33340000000p-2f,   0x1.8d99980000000p-2f,
    0x1.9c00000000000p-2f,   0x1.aa66660000000p-2f,   0x1.b8cccc0000000p-2f,   0x1.c733340000000p-2f,
    0x1.d599980000000p-2f,   0x1.e400000000000p-2f,   0x1.f266640000000p-2f,   0x1.0066660000000p-1f,
    0x1.0799980000000p-1f,   0x1.0ecccc0000000p-1f,   0x1.1600000000000p-1f,   0x1.1d33340000000p-1f,
    0x1.2466680000000p-1f,   0x1.2b999a0000000p-1f,   0x1.32cccc0000000p-1f,   0x1.3a00000000000p-1f,
    0x1.4133340000000p-1f,   0x1.4866680000000p-1f,   0x1.4f999a0000000p-1f,   0x1.56cccc0000000p-1f,
    0x1.5e00000000000p-1f,   0x1.6533340000000p-1f,   0x1.6c66680000000p-1f,   0x1.73999a0000000p-1f,
    0x1.7acccc0000000p-1f,   0x1.8200000000000p-1f,   0x1.8933340000000p-1f,   0x1.9066660000000p-1f,
    0x1.97999a0000000p-1f,   0x1.9ecccc0000000p-1f,   0x1.a600000000000p-1f,   0x1.ad33340000000p-1f,
    0x1.b466660000000p-1f,   0x1.bb999a0000000p-1f,   0x1.c2cccc0000000p-1f,   0x1.ca00000000000p-1f,
    0x1.d133340000000p-1f,   0x1.d866660000000p-1f,   0x1.df999a0000000p-1f,   0x1.e6cccc0000000p-1f,
    0x1.ee00000000000p-1f,   0x1.f533340000000p-1f,   0x1.fc66660000000p-1f,   0x1.0000000000000p+0f,
};

uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float bf16_to_float(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

namespace {

uint8_t nf4_code(float x) {
  uint8_t code = 0;
  for (float t : kNf4Thresholds) code += x > t;  // NaN compares false: code 0
  return code;
}

// bitsandbytes' dQuantize: a binary search over the ascending map, then the nearer
// neighbour by the float32 midpoint. The search always ends on an even index and a
// tie at the midpoint stays there.
uint8_t dynamic_code(float x, const float* map) {
  int pivot = 127, upper_pivot = 255, lower_pivot = 0;
  float lower = -1.0f, upper = 1.0f;
  float val = map[pivot];
  for (int step = 64; step > 0; step >>= 1) {
    if (x > val) {
      lower_pivot = pivot;
      lower = val;
      pivot += step;
    } else {
      upper_pivot = pivot;
      upper = val;
      pivot -= step;
    }
    val = map[pivot];
  }
  if (upper_pivot == 255) upper = map[upper_pivot];
  if (lower_pivot == 0) lower = map[lower_pivot];
  if (x > val) {
    float midpoint = (upper + val) * 0.5f;
    return static_cast<uint8_t>(x > midpoint ? upper_pivot : pivot);
  }
  float midpoint = (lower + val) * 0.5f;
  return static_cast<uint8_t>(x < midpoint ? lower_pivot : pivot);
}

void quantize_block(const float* x, size_t count, uint8_t* packed, float* absmax) {
  float m = 0.0f;
  for (size_t i = 0; i < count; ++i) m = std::fmax(m, std::fabs(x[i]));  // fmax skips NaN
  *absmax = m;
  const float reciprocal = 1.0f / m;
  for (size_t i = 0; i < count; i += 2) {
    float a = x[i];
    float b = i + 1 < count ? x[i + 1] : 0.0f;  // the zero-filled tail of the last block
    packed[i / 2] = static_cast<uint8_t>(nf4_code(a * reciprocal) << 4 | nf4_code(b * reciprocal));
  }
}

// 64 outputs of one block, scalar.
template <class Out, class Convert>
void dequantize_block_scalar(const uint8_t* p, float a, size_t count, Out* out, const float* table, Convert cvt) {
  for (size_t i = 0; i < count; ++i) {
    uint8_t byte = p[i / 2];
    uint8_t code = (i % 2 == 0) ? byte >> 4 : byte & 0x0f;
    out[i] = cvt(table[code] * a);
  }
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) inline __m256 lookup16(__m256i idx, __m256 low, __m256 high) {
  __m256 mask = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));  // bit 3 -> sign bit
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(low, idx), _mm256_permutevar8x32_ps(high, idx), mask);
}

// float32 -> bfloat16 for 8 values, as float_to_bf16 does (round to nearest even,
// NaN kept quiet), packed into 8 uint16.
__attribute__((target("avx2"))) inline __m128i to_bf16(__m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)), 16);
  const __m256i is_nan =
      _mm256_cmpgt_epi32(_mm256_and_si256(bits, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
  r = _mm256_blendv_epi8(r, _mm256_or_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x40)), is_nan);
  // packus works within 128-bit lanes: [r0..r3 r0..r3 | r4..r7 r4..r7] -> r0..r7.
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08));
}

// One full block (32 bytes -> 64 outputs): 8 bytes at a time, both nibbles looked
// up in the 16-entry table held in two registers, scaled, and interleaved back into
// element order (high nibble first).
template <class Out>
__attribute__((target("avx2"))) void dequantize_block_avx2(const uint8_t* p, float a, Out* out, const float* table) {
  const __m256 low = _mm256_loadu_ps(table), high = _mm256_loadu_ps(table + 8), scale = _mm256_set1_ps(a);
  const __m256i nibble = _mm256_set1_epi32(0x0f);
  for (size_t j = 0; j < kNf4BlockSize / 2; j += 8) {
    __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + j)));
    __m256 hi = _mm256_mul_ps(lookup16(_mm256_srli_epi32(bytes, 4), low, high), scale);
    __m256 lo = _mm256_mul_ps(lookup16(_mm256_and_si256(bytes, nibble), low, high), scale);
    __m256 u0 = _mm256_unpacklo_ps(hi, lo), u1 = _mm256_unpackhi_ps(hi, lo);
    __m256 first = _mm256_permute2f128_ps(u0, u1, 0x20), second = _mm256_permute2f128_ps(u0, u1, 0x31);
    if constexpr (std::is_same_v<Out, float>) {
      _mm256_storeu_ps(out + 2 * j, first);
      _mm256_storeu_ps(out + 2 * j + 8, second);
    } else {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * j), to_bf16(first));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * j + 8), to_bf16(second));
    }
  }
}
#endif

bool has_avx2() {
#if defined(__x86_64__)
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
#else
  return false;
#endif
}

template <class Out, class Convert>
void dequantize(const uint8_t* packed, const float* absmax, size_t n, Out* out, const float* table, Convert cvt) {
  const size_t blocks = nf4_blocks(n);
  const bool avx2 = has_avx2();
  parallel_for(blocks, 4096, [&](size_t begin, size_t end) {
    for (size_t b = begin; b < end; ++b) {
      const size_t first = b * kNf4BlockSize;
      const size_t count = std::min(kNf4BlockSize, n - first);
      const uint8_t* p = packed + first / 2;
      Out* o = out + first;
#if defined(__x86_64__)
      if (avx2 && count == kNf4BlockSize) {
        dequantize_block_avx2(p, absmax[b], o, table);
        continue;
      }
#endif
      dequantize_block_scalar(p, absmax[b], count, o, table, cvt);
    }
  });
}

}  // namespace

void nf4_quantize(const float* x, size_t n, uint8_t* packed, float* absmax) {
  parallel_for(nf4_blocks(n), 1024, [&](size_t begin, size_t end) {
    for (size_t b = begin; b < end; ++b) {
      const size_t first = b * kNf4BlockSize;
      quantize_block(x + first, std::min(kNf4BlockSize, n - first), packed + first / 2, absmax + b);
    }
  });
}

void nf4_dequantize(const uint8_t* packed, const float* absmax, size_t n, float* out, const float* code_table) {
  dequantize(packed, absmax, n, out, code_table, [](float f) { return f; });
}

void nf4_dequantize_bf16(const uint8_t* packed, const float* absmax, size_t n, uint16_t* out, const float* code_table) {
  dequantize(packed, absmax, n, out, code_table, float_to_bf16);
}

void absmax_quantize(const float* absmax, size_t n, uint8_t* codes, float* nested_absmax, float* offset) {
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += absmax[i];
  const float mean = n ? static_cast<float>(sum / static_cast<double>(n)) : 0.0f;
  *offset = mean;
  for (size_t b = 0; b < nested_blocks(n); ++b) {
    const size_t first = b * kNestedBlockSize, count = std::min(kNestedBlockSize, n - first);
    float m = 0.0f;
    for (size_t i = 0; i < count; ++i) m = std::fmax(m, std::fabs(absmax[first + i] - mean));
    nested_absmax[b] = m;
    const float reciprocal = 1.0f / m;
    for (size_t i = 0; i < count; ++i)
      codes[first + i] = dynamic_code((absmax[first + i] - mean) * reciprocal, kDynamicMap);
  }
}

void absmax_dequantize(const uint8_t* codes, size_t n, const float* nested_absmax, float offset, float* absmax,
                       const float* map) {
  for (size_t i = 0; i < n; ++i) {
    const float scaled = map[codes[i]] * nested_absmax[i / kNestedBlockSize];  // rounded, then added
    absmax[i] = scaled + offset;
  }
}

}  // namespace herd::kernels
