#include "kernels/dropout.h"

#include "kernels/cpu/parallel.h"

namespace herd::kernels {

void dropout_mask(const DropoutDraw& d, size_t n, uint8_t* mask) {
  parallel_for((n + 3) / 4, size_t{1} << 14, [&](size_t begin, size_t end) {
    for (size_t g = begin; g < end; ++g) {
      const unsigned bits = dropout_keep4(d, g);
      for (size_t i = 0; i < 4 && 4 * g + i < n; ++i) mask[4 * g + i] = static_cast<uint8_t>((bits >> i) & 1u);
    }
  });
}

}  // namespace herd::kernels
