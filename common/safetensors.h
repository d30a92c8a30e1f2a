// safetensors files: a reader over mmap with zero-copy views, sharded checkpoints
// through model.safetensors.index.json, and a writer (single file or sharded).
// Every header field is validated before any tensor data is touched; a bad file is
// a SafetensorsError naming the file and the tensor, never an out-of-bounds read.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace herd {

enum class DType { F32, F16, BF16, U8, I8, I32, I64 };

const char* dtype_name(DType d);  // "F32", ...
size_t dtype_size(DType d);

class SafetensorsError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct TensorView {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // inside the mapping; valid while the file is open
  size_t nbytes = 0;

  int64_t numel() const;
};

// Drops a tensor's pages from this process's resident memory (they stay in the page
// cache; a later read maps them again). Streaming a model larger than memory reads
// each tensor once and releases it, so the process's peak stays at one tensor.
void release_pages(const TensorView& v);

// One mapped .safetensors file.
class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::vector<std::string>& names() const { return names_; }  // in file order
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  const TensorView& tensor(const std::string& name) const;  // throws naming file and tensor

 private:
  SafetensorsFile() = default;
  std::filesystem::path path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, TensorView> tensors_;
  std::vector<std::string> names_;
};

// A model directory: model.safetensors, or the shards model.safetensors.index.json
// names. Each shard is opened once.
class SafetensorsCheckpoint {
 public:
  static SafetensorsCheckpoint open(const std::filesystem::path& dir_or_file);

  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  const TensorView& tensor(const std::string& name) const;

 private:
  std::map<std::string, std::shared_ptr<SafetensorsFile>> where_;
};

// Collects tensors and writes them. Each tensor's bytes go to an unlinked spill
// file in `spill_dir` as they are added, so memory holds only names and shapes:
// writing a 70B checkpoint does not need the checkpoint's size in RAM.
class SafetensorsWriter {
 public:
  explicit SafetensorsWriter(std::filesystem::path spill_dir = std::filesystem::temp_directory_path());
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  void add(const std::string& name, DType dtype, std::vector<int64_t> shape, const void* data, size_t nbytes);
  // A tensor whose bytes `fill` writes into the buffer it is given (exactly the
  // shape's bytes) when its file is written: nothing is kept or spilled before, so
  // a model larger than memory and than twice the disk can be made.
  void add_generated(const std::string& name, DType dtype, std::vector<int64_t> shape,
                     std::function<void(void*)> fill);
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  void write(const std::filesystem::path& file) const;
  // model-0000i-of-0000n.safetensors files of at most max_shard_bytes of tensor data
  // each (a larger tensor gets a shard of its own) and model.safetensors.index.json;
  // one shard is written as model.safetensors with no index.
  void write_sharded(const std::filesystem::path& dir, size_t max_shard_bytes) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    uint64_t offset;  // in the spill file
    uint64_t size;
    std::function<void(void*)> fill;  // a generated tensor's bytes, instead of the spill file's
  };
  size_t checked_bytes(const std::string& name, DType dtype, const std::vector<int64_t>& shape);
  void write_file(const std::filesystem::path& file, const std::vector<const Entry*>& entries) const;
  std::filesystem::path spill_dir_;
  int spill_fd_ = -1;
  uint64_t spilled_ = 0;
  std::vector<Entry> entries_;
  std::set<std::string> names_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace herd
