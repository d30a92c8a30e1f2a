#include "convert/merge.h"

#include <sys/statvfs.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "common/safetensors.h"
#include "worker/model/llama.h"
#include "worker/model/peft_adapter.h"
#include "worker/model/tensor_view.h"

namespace herd::convert {

using model::LlamaConfig;
using model::LoraOptions;
using model::ModelConfigError;
using model::is_float;
using model::module_path;
using model::read_adapter_config;
using model::read_prequantized;
using model::torch_dtype;
using model::view_tensor;

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kQuantState = ".quant_state.bitsandbytes__nf4";

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// The tensors that travel with a 4-bit weight W: W.absmax, W.quant_map, ...
bool quantization_part(const std::string& name) {
  for (const char* tail : {".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"}) {
    if (ends_with(name, tail)) return true;
  }
  return name.find(".quant_state.") != std::string::npos;
}

DType output_dtype(const std::string& name) {
  if (name == "float16") return DType::F16;
  if (name == "bfloat16") return DType::BF16;
  if (name == "float32") return DType::F32;
  throw std::invalid_argument(fmt::format("--dtype {}: float16, bfloat16 or float32", name));
}

const char* dtype_word(DType d) { return d == DType::F16 ? "float16" : d == DType::BF16 ? "bfloat16" : "float32"; }

// A 4-bit weight's [out, in], from its quant_state.
std::vector<int64_t> quantized_shape(const SafetensorsCheckpoint& ckpt, const std::string& name) {
  const TensorView& state = ckpt.tensor(name + kQuantState);
  const json s = json::parse(std::string(reinterpret_cast<const char*>(state.data), state.nbytes), nullptr, false);
  if (s.is_discarded() || !s.contains("shape") || !s["shape"].is_array() || s["shape"].size() != 2) {
    throw SafetensorsError(fmt::format("pre-quantized tensor '{}': quant_state has no [out, in] shape", name));
  }
  return {s["shape"][0].get<int64_t>(), s["shape"][1].get<int64_t>()};
}

struct Delta {
  std::string a, b, magnitude;  // the adapter's tensor names; magnitude with DoRA only
};

// One target module's adapter tensors, checked against the adapter config's r and
// the base's shapes; their names join `used`.
Delta module_delta(const fs::path& adapter_file, const SafetensorsFile& adapter, const LoraOptions& lora,
                   const LlamaConfig& config, int64_t layer, const std::string& m, const std::string& base_name,
                   std::set<std::string>& used) {
  const std::string module = module_path(layer, m);
  const auto [out, in] = config.linear_shape(m);
  const std::string prefix = "base_model.model." + module;
  const Delta d{prefix + ".lora_A.weight", prefix + ".lora_B.weight",
                lora.use_dora ? prefix + ".lora_magnitude_vector" : ""};
  std::vector<std::pair<std::string, std::vector<int64_t>>> want = {{d.a, {lora.r, in}}, {d.b, {out, lora.r}}};
  if (lora.use_dora) want.push_back({d.magnitude, {out}});
  for (const auto& [name, shape] : want) {
    if (!adapter.contains(name)) {
      throw ModelConfigError(fmt::format("{}: tensor '{}' is missing (target_modules {} at r {} on {} layers)",
                                         adapter_file.string(), name, fmt::join(lora.target_modules, ", "), lora.r,
                                         config.num_hidden_layers));
    }
    const TensorView& v = adapter.tensor(name);
    if (v.shape != shape || !is_float(v.dtype)) {
      throw ModelConfigError(fmt::format("{}: tensor '{}' is {} [{}]; the base ({}) needs float [{}] at r {}",
                                         adapter_file.string(), name, dtype_name(v.dtype), fmt::join(v.shape, ", "),
                                         base_name, fmt::join(shape, ", "), lora.r));
    }
    used.insert(name);
  }
  return d;
}

// The adapter against the base, before anything is written: base weight name -> its
// adapter tensors. Every tensor of the adapter must change a weight of the base.
std::map<std::string, Delta> match_adapter(const MergeSpec& spec, const LlamaConfig& config,
                                           const SafetensorsCheckpoint& base, const LoraOptions& lora,
                                           const fs::path& adapter_file, const SafetensorsFile& adapter) {
  std::map<std::string, Delta> deltas;
  std::set<std::string> used;
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    for (const auto& m : lora.target_modules) {
      const std::string weight = module_path(i, m) + ".weight";
      const auto [out, in] = config.linear_shape(m);
      deltas[weight] = module_delta(adapter_file, adapter, lora, config, i, m, spec.base.string(), used);
      if (!base.contains(weight)) {
        throw ModelConfigError(
            fmt::format("{}: has no tensor '{}', which the adapter changes", spec.base.string(), weight));
      }
      const bool quantized = base.contains(weight + kQuantState);
      const auto shape = quantized ? quantized_shape(base, weight) : base.tensor(weight).shape;
      if (shape != std::vector<int64_t>{out, in}) {
        throw ModelConfigError(fmt::format("{}: '{}' is [{}], but its config.json makes it [{}, {}]",
                                           spec.base.string(), weight, fmt::join(shape, ", "), out, in));
      }
    }
  }
  for (const auto& name : adapter.names()) {
    if (!used.count(name)) {
      throw ModelConfigError(fmt::format("{}: tensor '{}' matches no module of the base model at r {}",
                                         adapter_file.string(), name, lora.r));
    }
  }
  return deltas;
}

// A tensor to write.
struct Item {
  std::string name;
  std::vector<int64_t> shape;
  bool quantized;
  DType dtype;  // written: the output dtype for float (and 4-bit) tensors, else the stored one
  uint64_t bytes;
};

// The output dtype (--dtype, else the embedding's) and every tensor to write, counted into `report`.
std::vector<Item> plan_items(const MergeSpec& spec, const SafetensorsCheckpoint& base, MergeReport& report) {
  const std::string embed = "model.embed_tokens.weight";
  if (!base.contains(embed)) throw ModelConfigError(fmt::format("{}: has no '{}'", spec.base.string(), embed));
  const DType out_dtype = spec.dtype.empty() ? base.tensor(embed).dtype : output_dtype(spec.dtype);
  if (!is_float(out_dtype)) {
    throw ModelConfigError(
        fmt::format("{}: '{}' is {}; give --dtype", spec.base.string(), embed, dtype_name(out_dtype)));
  }
  report.dtype = dtype_word(out_dtype);
  std::vector<Item> items;
  for (const auto& name : base.names()) {
    if (quantization_part(name)) continue;
    const bool quantized = base.contains(name + kQuantState);
    const auto shape = quantized ? quantized_shape(base, name) : base.tensor(name).shape;
    report.from_4bit = report.from_4bit || quantized;
    const DType dtype = is_float(base.tensor(name).dtype) || quantized ? out_dtype : base.tensor(name).dtype;
    uint64_t bytes = dtype_size(dtype);
    for (int64_t d : shape) bytes *= static_cast<uint64_t>(d);
    items.push_back({name, shape, quantized, dtype, bytes});
    report.bytes += bytes;
    report.largest = std::max(report.largest, bytes);
  }
  return items;
}

// The output directory: new, on a disk with room for `bytes`, written under the
// temporary name this returns (an interrupted merge's is removed first).
fs::path temporary_output(const fs::path& out, uint64_t bytes) {
  if (fs::exists(out) && !(fs::is_directory(out) && fs::is_empty(out))) {
    throw std::invalid_argument(fmt::format("{} exists: remove it, or merge to another --out", out.string()));
  }
  const fs::path parent = fs::absolute(out).parent_path();
  fs::create_directories(parent);
  const fs::path tmp = parent / fmt::format(".{}.herd-merge", out.filename().string());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  struct statvfs disk {};
  const uint64_t need = bytes + (uint64_t{64} << 20);
  if (::statvfs(tmp.c_str(), &disk) == 0 && uint64_t{disk.f_bavail} * disk.f_frsize < need) {
    fs::remove_all(tmp);
    throw std::runtime_error(fmt::format("{}: the merged model needs {:.2f} GB of free disk, and {:.2f} GB are free",
                                         parent.string(), static_cast<double>(need) / 1e9,
                                         static_cast<double>(uint64_t{disk.f_bavail} * disk.f_frsize) / 1e9));
  }
  return tmp;
}

// A tensor with no delta copied (or cast) into dst a slice at a time, each slice's
// pages released: the process holds the output buffer and one slice, not the tensor twice.
void copy_in_slices(const TensorView& stored, DType dtype, void* dst) {
  const auto flat = view_tensor(stored).view({-1});
  const int64_t n = flat.numel(), slice = int64_t{1} << 24;
  const size_t out_size = dtype_size(dtype);
  for (int64_t first = 0; first < n; first += slice) {
    const auto part = flat.slice(0, first, std::min(n, first + slice)).to(torch_dtype(dtype)).contiguous();
    std::memcpy(static_cast<char*>(dst) + static_cast<size_t>(first) * out_size, part.data_ptr(), part.nbytes());
    TensorView read = stored;
    read.data = stored.data + static_cast<size_t>(first) * dtype_size(stored.dtype);
    read.nbytes = static_cast<size_t>(part.numel()) * dtype_size(stored.dtype);
    release_pages(read);
  }
}

// What the merge reads: the base, the adapter and which weight each delta changes.
struct Sources {
  const SafetensorsCheckpoint& base;
  const SafetensorsFile& adapter;
  const std::map<std::string, Delta>& deltas;
  double scaling;
};

// One tensor as written: the stored one (dequantized from 4 bits), plus B A scaling
// where the adapter changes it, in the output dtype. DoRA, as peft's merge: each row
// of W + s B A rescaled to its magnitude, (m / ||W + s B A||) (W + s B A).
void write_item(const Sources& in, const Item& item, void* dst) {
  torch::NoGradGuard no_grad;
  const TensorView& stored = in.base.tensor(item.name);
  const auto delta = in.deltas.find(item.name);
  if (!item.quantized && delta == in.deltas.end()) {
    copy_in_slices(stored, item.dtype, dst);
    release_pages(stored);
    return;
  }
  torch::Tensor w;
  if (item.quantized) {
    const auto f = read_prequantized(in.base, item.name, {item.shape[0], item.shape[1]});
    w = f->materialize(f->dtype);
    for (const char* part : {".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"}) {
      if (in.base.contains(item.name + part)) release_pages(in.base.tensor(item.name + part));
    }
  } else {
    w = view_tensor(stored);
  }
  if (delta != in.deltas.end()) {
    const auto a = view_tensor(in.adapter.tensor(delta->second.a)).to(torch::kFloat32);
    const auto b = view_tensor(in.adapter.tensor(delta->second.b)).to(torch::kFloat32);
    w = w.to(torch::kFloat32) + torch::matmul(b, a) * in.scaling;
    if (!delta->second.magnitude.empty()) {
      const auto m = view_tensor(in.adapter.tensor(delta->second.magnitude)).to(torch::kFloat32);
      w = (m / torch::linalg_vector_norm(w, 2, {1})).unsqueeze(1) * w;
    }
  }
  w = w.to(torch_dtype(item.dtype)).contiguous();
  std::memcpy(dst, w.data_ptr(), item.bytes);
  release_pages(stored);
}

// Beside the shards: config.json without its quantization, in the output dtype, and
// the base's generation and tokenizer files.
void write_model_files(const fs::path& base, const fs::path& dir, const std::string& dtype) {
  json cfg = json::parse(std::ifstream(base / "config.json"));
  cfg.erase("quantization_config");
  cfg["torch_dtype"] = dtype;
  std::ofstream(dir / "config.json") << cfg.dump(2) << "\n";
  for (const char* file : {"generation_config.json", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                           "special_tokens_map.json", "added_tokens.json", "chat_template.jinja"}) {
    if (fs::exists(base / file)) fs::copy_file(base / file, dir / file);
  }
}

}  // namespace

MergeReport merge_adapter(const MergeSpec& spec, const std::function<void(uint64_t, uint64_t)>& progress) {
  const LlamaConfig config = LlamaConfig::from_file(spec.base / "config.json");
  const SafetensorsCheckpoint base = SafetensorsCheckpoint::open(spec.base);
  const LoraOptions lora = read_adapter_config(spec.adapter);
  fs::path adapter_file = spec.adapter / "adapter_model.safetensors";
  if (!fs::exists(adapter_file) && fs::exists(spec.adapter / "adapter_model.bin")) {
    adapter_file = spec.adapter / "adapter_model.bin";  // refused by open() with the conversion
  }
  const auto adapter = SafetensorsFile::open(adapter_file);
  const auto deltas = match_adapter(spec, config, base, lora, adapter_file, *adapter);
  MergeReport report;
  const std::vector<Item> items = plan_items(spec, base, report);
  const fs::path tmp = temporary_output(spec.out, report.bytes);
  try {
    SafetensorsWriter writer(tmp);
    writer.set_metadata("format", "pt");
    const Sources sources{base, *adapter, deltas, lora.scaling()};
    uint64_t done = 0;
    for (const Item& item : items) {
      report.merged += deltas.count(item.name);
      writer.add_generated(item.name, item.dtype, item.shape, [&, item](void* dst) {
        write_item(sources, item, dst);
        done += item.bytes;
        if (progress) progress(done, report.bytes);
      });
    }
    report.tensors = items.size();
    writer.write_sharded(tmp, spec.shard_bytes);
    write_model_files(spec.base, tmp, report.dtype);
    for (const auto& e : fs::directory_iterator(tmp)) report.files.push_back(e.path().filename().string());
    std::sort(report.files.begin(), report.files.end());
    if (fs::exists(spec.out)) fs::remove(spec.out);  // an empty directory
    fs::rename(tmp, spec.out);
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
    throw;
  }
  return report;
}

}  // namespace herd::convert
