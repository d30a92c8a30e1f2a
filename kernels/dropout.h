// LoRA dropout's masks from a counter-based generator, the same on the CPU and a
// GPU: element e of a draw is kept when word e % 4 of Philox-4x32-10 (Salmon et al.,
// "Parallel random numbers: as easy as 1, 2, 3") with key `seed` and counter
// {offset / 4, e / 4} (two 64-bit halves, low words first) is below keep_below. That
// is the counter curand_init(seed, e / 4, offset) starts from, so draws whose
// offsets come from a torch CUDA generator use counters no other draw of that
// generator uses. A mask is a function of (draw, e): it is regenerated where it is
// needed and never stored. Pure compute on raw buffers.
#pragma once

#include <cstddef>
#include <cstdint>

#ifdef __CUDACC__
#define HERD_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HERD_HOST_DEVICE inline
#endif

namespace herd::kernels {

struct DropoutDraw {
  uint64_t seed = 0;
  uint64_t offset = 0;
  uint32_t keep_below = 0;  // an element is kept with probability keep_below / 2^32
  float scale = 1;          // a kept element is multiplied by 1 / (1 - p)
};

// The draw that drops each element with probability p in (0, 1).
inline DropoutDraw dropout_draw(uint64_t seed, uint64_t offset, double p) {
  const double keep = (1.0 - p) * 4294967296.0;
  return {seed, offset, keep >= 4294967295.0 ? 0xffffffffu : static_cast<uint32_t>(keep),
          static_cast<float>(1.0 / (1.0 - p))};
}

// Philox-4x32-10 of `counter` under `key`, in place.
HERD_HOST_DEVICE void philox4x32_10(uint32_t (&counter)[4], uint32_t key0, uint32_t key1) {
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * counter[0];
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * counter[2];
    const uint32_t c[4] = {static_cast<uint32_t>(p1 >> 32) ^ counter[1] ^ key0, static_cast<uint32_t>(p1),
                           static_cast<uint32_t>(p0 >> 32) ^ counter[3] ^ key1, static_cast<uint32_t>(p0)};
    for (int i = 0; i < 4; ++i) counter[i] = c[i];
    key0 += 0x9E3779B9u;
    key1 += 0xBB67AE85u;
  }
}

// Whether elements 4 * group .. 4 * group + 3 of the draw are kept, in bits 0..3.
HERD_HOST_DEVICE unsigned dropout_keep4(const DropoutDraw& d, uint64_t group) {
  const uint64_t block = d.offset / 4;
  uint32_t c[4] = {static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), static_cast<uint32_t>(group),
                   static_cast<uint32_t>(group >> 32)};
  philox4x32_10(c, static_cast<uint32_t>(d.seed), static_cast<uint32_t>(d.seed >> 32));
  unsigned bits = 0;
  for (int i = 0; i < 4; ++i) bits |= (c[i] < d.keep_below ? 1u : 0u) << i;
  return bits;
}

// mask[e] = 1 where the draw keeps element e, 0 where it drops it, e < n.
void dropout_mask(const DropoutDraw& d, size_t n, uint8_t* mask);

}  // namespace herd::kernels
