#include "common/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/files.h"

namespace herd {

void release_pages(const TensorView& v) {
  if (v.data == nullptr || v.nbytes == 0) return;
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(v.data) / page * page;
  const auto end = reinterpret_cast<uintptr_t>(v.data) + v.nbytes;
  ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);  // advice: a failure only costs memory
}

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference implementation's limit

struct DTypeInfo {
  DType dtype;
  const char* name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {{DType::F32, "F32", 4}, {DType::F16, "F16", 2}, {DType::BF16, "BF16", 2},
                                 {DType::U8, "U8", 1},   {DType::I8, "I8", 1},   {DType::I32, "I32", 4},
                                 {DType::I64, "I64", 8}};

[[noreturn]] void fail(const fs::path& file, const std::string& message) {
  throw SafetensorsError(fmt::format("{}: {}", file.string(), message));
}
[[noreturn]] void fail(const fs::path& file, const std::string& tensor, const std::string& message) {
  throw SafetensorsError(fmt::format("{}: tensor '{}': {}", file.string(), tensor, message));
}

void reject_pytorch_pickle(const fs::path& path) {
  auto ext = path.extension().string();
  if (ext == ".bin" || ext == ".pt" || ext == ".pth") {
    fail(path,
         "PyTorch pickle checkpoints are not read by herd (they can run code when loaded); convert it to "
         "safetensors, e.g. in Python: model = AutoModelForCausalLM.from_pretrained(DIR); "
         "model.save_pretrained(OUT, safe_serialization=True)");
  }
}

// Parses the header. Duplicate keys are legal JSON to nlohmann (the last wins); a
// safetensors header naming one tensor twice is corrupt, so top-level keys are
// collected as they are parsed.
json parse_header(const std::string& text, std::string& duplicate) {
  std::set<std::string> seen;
  json::parser_callback_t cb = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth == 1 && event == json::parse_event_t::key && duplicate.empty()) {
      std::string key = parsed.get<std::string>();
      if (!seen.insert(key).second) duplicate = key;
    }
    return true;
  };
  return json::parse(text, cb, /*allow_exceptions=*/false);
}

// The whole file mapped read-only; `size` gets its size.
void* map_whole(const fs::path& path, size_t& size) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, fmt::format("cannot open: {}", std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    fail(path, "cannot stat");
  }
  size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    fail(path, fmt::format("file is {} bytes; a safetensors file starts with an 8-byte header length", size));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) fail(path, "cannot map the file");
  return map;
}

// The JSON header after the 8-byte little-endian length (`header_len`): an object
// naming each tensor once.
json read_header(const fs::path& path, const uint8_t* bytes, size_t size, uint64_t& header_len) {
  header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = header_len << 8 | bytes[i];
  if (header_len > kMaxHeaderBytes) {
    fail(path, fmt::format("header length {} exceeds the {} byte limit (not a safetensors file?)", header_len,
                           kMaxHeaderBytes));
  }
  if (header_len > size - 8) {
    fail(path, fmt::format("header length {} runs past the end of the {}-byte file (truncated?)", header_len, size));
  }
  const std::string text(reinterpret_cast<const char*>(bytes + 8), header_len);
  std::string duplicate;
  json header = parse_header(text, duplicate);
  if (header.is_discarded()) fail(path, "header is not valid JSON");
  if (!header.is_object()) fail(path, "header must be a JSON object");
  if (!duplicate.empty()) fail(path, duplicate, "appears twice in the header");
  return header;
}

const DTypeInfo& entry_dtype(const fs::path& path, const std::string& name, const json& dt) {
  if (dt.is_string()) {
    for (const auto& i : kDTypes) {
      if (dt.get<std::string>() == i.name) return i;
    }
  }
  fail(path, name, fmt::format("unsupported dtype {} (herd reads F32, F16, BF16, U8, I8, I32, I64)", dt.dump()));
}

// One tensor's entry: its dtype, its shape, and data_offsets inside the data area
// that hold exactly its bytes.
TensorView read_entry(const fs::path& path, const std::string& name, const json& entry, const uint8_t* data,
                      size_t data_size) {
  if (!entry.is_object()) fail(path, name, "entry must be an object with dtype, shape and data_offsets");
  for (const char* k : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(k)) fail(path, name, fmt::format("missing '{}'", k));
  }
  TensorView t;
  t.name = name;
  const DTypeInfo& info = entry_dtype(path, name, entry["dtype"]);
  t.dtype = info.dtype;
  const json& shape = entry["shape"];
  if (!shape.is_array()) fail(path, name, "shape must be an array of non-negative integers");
  uint64_t numel = 1;
  for (const json& s : shape) {
    if (!s.is_number_unsigned()) fail(path, name, fmt::format("shape {} is not non-negative integers", shape.dump()));
    uint64_t v = s.get<uint64_t>();
    if (v != 0 && numel > UINT64_MAX / v) fail(path, name, "shape overflows");
    numel *= v;
    t.shape.push_back(static_cast<int64_t>(v));
  }
  const json& off = entry["data_offsets"];
  if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned()) {
    fail(path, name, fmt::format("data_offsets {} must be [begin, end]", off.dump()));
  }
  uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
  if (begin > end) fail(path, name, fmt::format("data_offsets [{}, {}] end before they begin", begin, end));
  if (end > data_size) {
    fail(path, name,
         fmt::format("data_offsets [{}, {}] run past the {} bytes of data (truncated?)", begin, end, data_size));
  }
  if (numel > UINT64_MAX / info.size || numel * info.size != end - begin) {
    fail(path, name,
         fmt::format("shape {} of {} needs {} bytes but data_offsets span {}", shape.dump(), info.name,
                     numel * info.size, end - begin));
  }
  t.data = data + begin;
  t.nbytes = end - begin;
  return t;
}

struct Span {
  size_t begin, end;
  std::string name;
};

// As the reference implementation requires: tensors tile the data area exactly.
// Leaves `spans` in file order.
void check_tiling(const fs::path& path, std::vector<Span>& spans, size_t data_size) {
  std::sort(spans.begin(), spans.end(),
            [](const Span& a, const Span& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  size_t expected = 0;
  for (const auto& s : spans) {
    if (s.begin < expected) fail(path, s.name, fmt::format("overlaps the tensor before it (starts at {})", s.begin));
    if (s.begin > expected) {
      fail(path, s.name, fmt::format("leaves bytes {}..{} of the data area unused", expected, s.begin));
    }
    expected = s.end;
  }
  if (expected != data_size) {
    fail(path, fmt::format("tensors cover {} of the {} data bytes (trailing bytes)", expected, data_size));
  }
}

}  // namespace

const char* dtype_name(DType d) {
  for (const auto& i : kDTypes) {
    if (i.dtype == d) return i.name;
  }
  return "?";
}

size_t dtype_size(DType d) {
  for (const auto& i : kDTypes) {
    if (i.dtype == d) return i.size;
  }
  return 0;
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const fs::path& path) {
  reject_pytorch_pickle(path);
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->map_ = map_whole(path, f->size_);
  const auto* bytes = static_cast<const uint8_t*>(f->map_);
  uint64_t header_len = 0;
  json header = read_header(path, bytes, f->size_, header_len);
  const uint8_t* data = bytes + 8 + header_len;
  const size_t data_size = f->size_ - 8 - header_len;
  std::vector<Span> spans;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) fail(path, "__metadata__ must be an object of strings");
      for (auto& [k, v] : entry.items()) {
        if (!v.is_string()) fail(path, fmt::format("__metadata__ value of '{}' must be a string", k));
        f->metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    TensorView t = read_entry(path, name, entry, data, data_size);
    spans.push_back({static_cast<size_t>(t.data - data), static_cast<size_t>(t.data - data) + t.nbytes, name});
    f->tensors_.emplace(name, std::move(t));
  }
  check_tiling(path, spans, data_size);
  for (const auto& s : spans) f->names_.push_back(s.name);
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, size_);
}

const TensorView& SafetensorsFile::tensor(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail(path_, name, "no such tensor");
  return it->second;
}

SafetensorsCheckpoint SafetensorsCheckpoint::open(const fs::path& dir_or_file) {
  SafetensorsCheckpoint c;
  if (!fs::is_directory(dir_or_file)) {
    auto f = SafetensorsFile::open(dir_or_file);
    for (const auto& n : f->names()) c.where_[n] = f;
    return c;
  }
  const fs::path single = dir_or_file / "model.safetensors";
  const fs::path index = dir_or_file / "model.safetensors.index.json";
  if (fs::exists(single)) return open(single);
  if (!fs::exists(index)) {
    for (const char* pickle : {"pytorch_model.bin", "pytorch_model.bin.index.json"}) {
      if (fs::exists(dir_or_file / pickle)) reject_pytorch_pickle(dir_or_file / "pytorch_model.bin");
    }
    fail(dir_or_file, "holds neither model.safetensors nor model.safetensors.index.json");
  }
  std::ifstream in(index);
  json doc = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object() || !doc.contains("weight_map") || !doc["weight_map"].is_object()) {
    fail(index, "must be a JSON object with a \"weight_map\" object");
  }
  std::map<std::string, std::shared_ptr<SafetensorsFile>> shards;
  for (auto& [name, file] : doc["weight_map"].items()) {
    if (!file.is_string()) fail(index, name, "weight_map value must be a file name");
    const std::string shard = file.get<std::string>();
    if (shard.find('/') != std::string::npos)
      fail(index, name, fmt::format("shard '{}' must be a plain file name", shard));
    auto& opened = shards[shard];
    if (!opened) {
      if (!fs::exists(dir_or_file / shard)) fail(index, name, fmt::format("shard {} does not exist", shard));
      opened = SafetensorsFile::open(dir_or_file / shard);
    }
    if (!opened->contains(name)) fail(index, name, fmt::format("is not in shard {}", shard));
    c.where_[name] = opened;
  }
  return c;
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> out;
  for (const auto& [n, f] : where_) out.push_back(n);
  return out;
}

const TensorView& SafetensorsCheckpoint::tensor(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw SafetensorsError(fmt::format("checkpoint has no tensor '{}'", name));
  return it->second->tensor(name);
}

SafetensorsWriter::SafetensorsWriter(fs::path spill_dir) : spill_dir_(std::move(spill_dir)) {}

SafetensorsWriter::~SafetensorsWriter() {
  if (spill_fd_ >= 0) ::close(spill_fd_);
}

size_t SafetensorsWriter::checked_bytes(const std::string& name, DType dtype, const std::vector<int64_t>& shape) {
  int64_t numel = 1;
  for (int64_t s : shape) numel *= s;
  if (!names_.insert(name).second) throw SafetensorsError(fmt::format("tensor '{}' added twice", name));
  return static_cast<size_t>(numel) * dtype_size(dtype);
}

void SafetensorsWriter::add_generated(const std::string& name, DType dtype, std::vector<int64_t> shape,
                                      std::function<void(void*)> fill) {
  const size_t nbytes = checked_bytes(name, dtype, shape);
  entries_.push_back({name, dtype, std::move(shape), 0, nbytes, std::move(fill)});
}

void SafetensorsWriter::add(const std::string& name, DType dtype, std::vector<int64_t> shape, const void* data,
                            size_t nbytes) {
  if (const size_t want = checked_bytes(name, dtype, shape); want != nbytes) {
    names_.erase(name);
    throw SafetensorsError(fmt::format("tensor '{}': {} bytes given for {} bytes of {}", name, nbytes, want,
                                       dtype_name(dtype)));
  }
  if (spill_fd_ < 0) {
    fs::create_directories(spill_dir_);
    std::string pattern = (spill_dir_ / ".herd-spill-XXXXXX").string();
    spill_fd_ = ::mkstemp(pattern.data());
    if (spill_fd_ < 0) throw SafetensorsError(fmt::format("{}: cannot create a spill file", spill_dir_.string()));
    ::unlink(pattern.c_str());  // gone with the process, whatever happens
  }
  const auto* p = static_cast<const char*>(data);
  for (size_t done = 0; done < nbytes;) {
    ssize_t n = ::pwrite(spill_fd_, p + done, nbytes - done, static_cast<off_t>(spilled_ + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw SafetensorsError(fmt::format("tensor '{}': spill write failed: {}", name, std::strerror(errno)));
    done += static_cast<size_t>(n);
  }
  entries_.push_back({name, dtype, std::move(shape), spilled_, nbytes, nullptr});
  spilled_ += nbytes;
}

void SafetensorsWriter::write_file(const fs::path& file, const std::vector<const Entry*>& entries) const {
  json header = json::object();
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  uint64_t offset = 0;
  for (const Entry* e : entries) {
    header[e->name] = {
        {"dtype", dtype_name(e->dtype)}, {"shape", e->shape}, {"data_offsets", {offset, offset + e->size}}};
    offset += e->size;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned, as HF writes it
  const fs::path tmp = file.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    uint64_t len = text.size();
    for (int i = 0; i < 8; ++i) out.put(static_cast<char>(len >> (8 * i) & 0xff));
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    std::vector<char> buffer(size_t{4} << 20);
    for (const Entry* e : entries) {
      if (e->fill) {
        std::vector<char> bytes(e->size);
        e->fill(bytes.data());
        out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
        continue;
      }
      for (uint64_t done = 0; done < e->size;) {
        const size_t want = static_cast<size_t>(std::min<uint64_t>(buffer.size(), e->size - done));
        ssize_t n = ::pread(spill_fd_, buffer.data(), want, static_cast<off_t>(e->offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) throw SafetensorsError(fmt::format("tensor '{}': spill read failed", e->name));
        out.write(buffer.data(), n);
        done += static_cast<uint64_t>(n);
      }
    }
    close_file(out, tmp);
  }
  fs::rename(tmp, file);  // never a half-written file under the real name
}

void SafetensorsWriter::write(const fs::path& file) const {
  std::vector<const Entry*> all;
  for (const auto& e : entries_) all.push_back(&e);
  write_file(file, all);
}

void SafetensorsWriter::write_sharded(const fs::path& dir, size_t max_shard_bytes) const {
  fs::create_directories(dir);
  std::vector<std::vector<const Entry*>> shards(1);
  size_t in_shard = 0;
  for (const auto& e : entries_) {
    if (!shards.back().empty() && in_shard + e.size > max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(&e);
    in_shard += e.size;
  }
  if (shards.size() == 1) {
    write_file(dir / "model.safetensors", shards[0]);
    return;
  }
  json weight_map = json::object();
  size_t total = 0;
  for (size_t i = 0; i < shards.size(); ++i) {
    std::string name = fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, shards.size());
    write_file(dir / name, shards[i]);
    for (const Entry* e : shards[i]) {
      weight_map[e->name] = name;
      total += e->size;
    }
  }
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  herd::write_file(dir / "model.safetensors.index.json", index.dump(2) + "\n");
}

}  // namespace herd
