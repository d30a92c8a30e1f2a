// trainer.offload_activations: the input that activation checkpointing keeps of each
// decoder layer leaves the GPU during the forward, for pinned host memory, and comes
// back for the layer's backward; as a layer's backward begins, the copy of the next
// one's input (layer - 1) starts. Activations only, never weights. The copies run on
// a stream of their own and overlap the layers' compute; at most two inputs are on
// the GPU at once in backward (the one in use and the one arriving).
#pragma once

#include <cstdint>
#include <map>
#include <memory>

#include <torch/torch.h>

namespace herd::model {

class ActivationOffload {
 public:
  ActivationOffload();
  ~ActivationOffload();
  ActivationOffload(const ActivationOffload&) = delete;
  ActivationOffload& operator=(const ActivationOffload&) = delete;

  // Forward: a copy of layer's input starts; the caller may drop its own reference
  // (the device memory is not reused before the copy has read it). A CPU tensor is
  // cloned, so that tests run the same bookkeeping without a GPU.
  void save(int64_t layer, const torch::Tensor& input);
  // Backward: layer's input, on its device again, ready for the current stream;
  // starts bringing back layer - 1's.
  torch::Tensor load(int64_t layer);
  // Inputs saved and not loaded yet, and their bytes.
  size_t held() const { return entries_.size(); }
  int64_t held_bytes() const;

 private:
  struct Entry;
  void prefetch(int64_t layer);
  std::map<int64_t, std::unique_ptr<Entry>> entries_;
  struct Streams;
  std::unique_ptr<Streams> streams_;  // the copy stream, made at the first GPU input
};

}  // namespace herd::model
