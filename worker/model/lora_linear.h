// One linear layer of the base model with its LoRA adapter, as peft computes it:
//   y = x W^T + dropout(x) A^T B^T * scaling
// or with DoRA (LoraSpec::dora), peft's weight-decomposed form with a trained
// magnitude m [out] per output feature and n = ||W + scaling B A|| over each row
// (detached: no gradient flows through it):
//   y = x W^T + (m/n - 1) * base + (m/n) * scaling * dropout(x) A^T B^T
// where base is x W^T, or dropout(x) W^T while dropout is on (as peft does).
// As bitsandbytes' Linear4bit does, x W^T runs in the compute dtype and its result
// is cast back to x's dtype; the adapter runs in float32 (peft), or on a GPU in
// x's dtype when LoraSpec::in_input_dtype says so.
// W is frozen: NF4 as bitsandbytes stores it (quantization on) or a dense tensor
// (quantization off). Only A and B get gradients. The backward of x W^T
// dequantizes W again instead of keeping a dequantized copy.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

namespace herd::model {

// The frozen weight [out, in] of one linear layer.
struct FrozenWeight {
  int64_t out_features = 0;
  int64_t in_features = 0;
  // NF4: packed codes (uint8, ceil(n/2)), absmax either plain (float32 per 64) or
  // double-quantized (uint8 codes per 64, float32 nested absmax per 256, offset).
  torch::Tensor packed;
  torch::Tensor absmax;         // float32, when not double-quantized
  torch::Tensor absmax_codes;   // uint8, when double-quantized
  torch::Tensor nested_absmax;  // float32
  double offset = 0;
  torch::Tensor code_table;  // float32 [16] (the checkpoint's quant_map)
  // The dtype bitsandbytes dequantizes into: the original weight's (quant_state
  // "dtype"). A different compute dtype is a cast after that, as in matmul_4bit.
  torch::ScalarType dtype = torch::kFloat32;
  torch::Tensor nested_map;  // float32 [256]
  // Dense (quantization off): [out, in], never requires grad.
  torch::Tensor dense;

  bool quantized() const { return packed.defined(); }
  // The float32 absmax per block of 64 (decoding the double quantization).
  torch::Tensor block_absmax() const;
  // W as a [out, in] tensor of `dtype` (bit-identical to bitsandbytes' dequantize).
  torch::Tensor materialize(torch::ScalarType dtype) const;
  size_t bytes() const;  // memory held
  void to(torch::Device device);  // moves every tensor

  // Quantizes a [out, in] weight (float32, float16 or bfloat16) to NF4.
  static FrozenWeight quantize(const torch::Tensor& weight, bool double_quant);
  static FrozenWeight dense_weight(torch::Tensor weight);
};

// NF4 dequantize with torch ops: the same arithmetic as the CPU kernel (one float32
// product per element), so any device gives the same bits.
torch::Tensor nf4_dequantize_torch(const torch::Tensor& packed, const torch::Tensor& absmax, int64_t numel,
                                   const torch::Tensor& code_table);

struct LoraSpec {
  int64_t r = 8;
  double scaling = 4.0;  // lora_alpha / r (or / sqrt(r))
  double dropout = 0.0;
  // For an input on a GPU in bfloat16 or float16: the adapter's GEMMs in the input's
  // dtype (A and B cast from their float32 masters), as under autocast, instead of
  // in float32 as peft computes them without it.
  bool in_input_dtype = false;
  // Whose dropout draws the masks: herd's counter-based one (worker/model/dropout.h)
  // for an input on a GPU and torch's on the CPU (kAuto), or one of them everywhere
  // (the fused path on the CPU in tests; torch's on a GPU for comparison).
  enum class Dropout { kAuto, kPhilox, kTorch };
  Dropout dropout_kind = Dropout::kAuto;
  bool dora = false;  // DoRA: a magnitude vector beside A and B

  bool philox_dropout(const torch::Tensor& x) const {
    return dropout_kind == Dropout::kPhilox || (dropout_kind == Dropout::kAuto && x.is_cuda());
  }
};

class LoraLinear {
 public:
  LoraLinear(FrozenWeight weight, torch::ScalarType compute_dtype, std::optional<LoraSpec> lora,
             torch::Generator* init_rng);

  torch::Tensor forward(const torch::Tensor& x, bool training) const;

  const FrozenWeight& weight() const { return weight_; }
  torch::ScalarType compute_dtype() const { return compute_dtype_; }
  const std::optional<LoraSpec>& lora_spec() const { return lora_; }
  FrozenWeight& mutable_weight() { return weight_; }  // a WeightSource swaps its tensors
  void to(torch::Device device);  // the weight and the adapter (its tensors stay leaves)
  bool has_lora() const { return lora_.has_value(); }
  torch::Tensor& lora_A() { return lora_A_; }  // [r, in], float32
  torch::Tensor& lora_B() { return lora_B_; }  // [out, r], float32
  const torch::Tensor& lora_A() const { return lora_A_; }
  const torch::Tensor& lora_B() const { return lora_B_; }
  bool dora() const { return lora_ && lora_->dora; }
  const torch::Tensor& magnitude() const { return magnitude_; }  // [out], float32; DoRA only
  // The adapter's trainable tensors with peft's names after the module's path:
  // lora_A.weight, lora_B.weight and, with DoRA, lora_magnitude_vector.
  std::vector<std::pair<std::string, torch::Tensor*>> adapter_tensors();
  // DoRA: ||W + scaling B A|| over each row of W (float32, no gradient); w is W as
  // dequantized for the forward (weight().materialize(weight().dtype) when undefined).
  torch::Tensor weight_norm(const torch::Tensor& w = {}) const;
  // DoRA: m set to weight_norm(), as peft initialises it (B = 0 gives ||W||).
  void reset_magnitude();
  // The adapter's dtype for input x: float32, or x's with LoraSpec::in_input_dtype.
  torch::ScalarType adapter_dtype(const torch::Tensor& x) const;

 private:
  FrozenWeight weight_;
  torch::ScalarType compute_dtype_;
  std::optional<LoraSpec> lora_;
  torch::Tensor lora_A_, lora_B_, magnitude_;

  torch::Tensor dora_forward(const torch::Tensor& x, bool training) const;
  torch::Tensor adapter_dropout(const torch::Tensor& h) const;
};

}  // namespace herd::model
