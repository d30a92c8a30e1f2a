// safetensors views as torch tensors: one mapping from file dtypes to torch's.
#pragma once

#include <torch/torch.h>

#include "common/safetensors.h"

namespace herd::model {

torch::ScalarType torch_dtype(DType d);
inline bool is_float(DType d) { return d == DType::F32 || d == DType::F16 || d == DType::BF16; }

// A tensor over the view's bytes, no copy: valid while the file is mapped.
inline torch::Tensor view_tensor(const TensorView& v) {
  return torch::from_blob(const_cast<uint8_t*>(v.data), v.shape, torch_dtype(v.dtype));
}

}  // namespace herd::model
