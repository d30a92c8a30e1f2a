#include "common/safetensors.h"

#include <unistd.h>

#include <cstring>
#include <fstream>

#include <gtest/gtest.h>

namespace herd {
namespace {

namespace fs = std::filesystem;

class Safetensors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("herd-st-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A file with exactly this header text and data (and optionally a lying length).
  fs::path raw(const std::string& header, const std::string& data, int64_t header_len = -1) {
    fs::path p = dir_ / "x.safetensors";
    std::ofstream out(p, std::ios::binary);
    uint64_t len = header_len < 0 ? header.size() : static_cast<uint64_t>(header_len);
    for (int i = 0; i < 8; ++i) out.put(static_cast<char>(len >> (8 * i) & 0xff));
    out << header << data;
    return p;
  }

  std::string error_of(const fs::path& p) {
    try {
      SafetensorsCheckpoint::open(p);
    } catch (const SafetensorsError& e) {
      return e.what();
    }
    return "";
  }

  fs::path dir_;
};

TEST_F(Safetensors, WriteThenReadEveryDtype) {
  SafetensorsWriter w;
  float f32[6] = {1, 2, 3, 4, 5, 6.5f};
  uint16_t half[2] = {0x3C00, 0xC000};
  int64_t i64[3] = {-1, 0, 1LL << 40};
  uint8_t u8[5] = {1, 2, 3, 4, 5};
  int8_t i8[1] = {-7};
  int32_t i32[2] = {7, -8};
  w.add("a.f32", DType::F32, {2, 3}, f32, sizeof f32);
  w.add("b.f16", DType::F16, {2}, half, sizeof half);
  w.add("c.bf16", DType::BF16, {2, 1}, half, sizeof half);
  w.add("d.i64", DType::I64, {3}, i64, sizeof i64);
  w.add("e.u8", DType::U8, {5}, u8, sizeof u8);
  w.add("f.i8", DType::I8, {1}, i8, sizeof i8);
  w.add("g.i32", DType::I32, {2}, i32, sizeof i32);
  w.add("h.empty", DType::F32, {0, 4}, nullptr, 0);
  w.set_metadata("format", "pt");
  w.write(dir_ / "m.safetensors");

  auto f = SafetensorsFile::open(dir_ / "m.safetensors");
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_EQ(f->names().size(), 8u);
  const auto& a = f->tensor("a.f32");
  EXPECT_EQ(a.dtype, DType::F32);
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp(a.data, f32, sizeof f32), 0);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data) % 8, 0u);  // data area 8-byte aligned
  EXPECT_EQ(std::memcmp(f->tensor("d.i64").data, i64, sizeof i64), 0);
  EXPECT_EQ(f->tensor("c.bf16").dtype, DType::BF16);
  EXPECT_EQ(f->tensor("h.empty").numel(), 0);
}

TEST_F(Safetensors, ShardedCheckpointThroughTheIndex) {
  SafetensorsWriter w;
  std::vector<float> big(1000, 1.5f), small(10, 2.5f);
  w.add("layers.0.w", DType::F32, {1000}, big.data(), 4000);
  w.add("layers.1.w", DType::F32, {1000}, big.data(), 4000);
  w.add("norm", DType::F32, {10}, small.data(), 40);
  w.write_sharded(dir_ / "model", 5000);
  EXPECT_TRUE(fs::exists(dir_ / "model" / "model-00001-of-00002.safetensors"));
  EXPECT_TRUE(fs::exists(dir_ / "model" / "model.safetensors.index.json"));
  auto c = SafetensorsCheckpoint::open(dir_ / "model");
  EXPECT_EQ(c.names(), (std::vector<std::string>{"layers.0.w", "layers.1.w", "norm"}));
  EXPECT_EQ(reinterpret_cast<const float*>(c.tensor("norm").data)[9], 2.5f);
  EXPECT_EQ(reinterpret_cast<const float*>(c.tensor("layers.1.w").data)[999], 1.5f);
}

TEST_F(Safetensors, GeneratedTensorsAreFilledAsTheirShardIsWrittenBesideAddedOnes) {
  SafetensorsWriter w(dir_ / "spill");
  int filled = 0;
  w.add_generated("layers.0.w", DType::I32, {1000}, [&](void* p) {
    ++filled;
    for (int i = 0; i < 1000; ++i) static_cast<int32_t*>(p)[i] = 3 * i;
  });
  const std::vector<float> norm(10, 2.5f);
  w.add("norm", DType::F32, {10}, norm.data(), 40);
  w.add_generated("layers.1.w", DType::U8, {3000}, [&](void* p) { std::memset(p, 7, 3000); ++filled; });
  EXPECT_EQ(filled, 0);  // nothing is made before it is written
  EXPECT_THROW(w.add_generated("norm", DType::F32, {1}, [](void*) {}), SafetensorsError);
  EXPECT_THROW(w.add("short", DType::F32, {4}, norm.data(), 8), SafetensorsError);
  w.add("short", DType::F32, {2}, norm.data(), 8);  // a refused tensor's name stays free
  w.write_sharded(dir_ / "model", 4000);
  EXPECT_EQ(filled, 2);
  auto c = SafetensorsCheckpoint::open(dir_ / "model");
  EXPECT_EQ(reinterpret_cast<const int32_t*>(c.tensor("layers.0.w").data)[999], 2997);
  EXPECT_EQ(c.tensor("layers.1.w").data[2999], 7);
  EXPECT_EQ(reinterpret_cast<const float*>(c.tensor("norm").data)[9], 2.5f);
  EXPECT_TRUE(fs::exists(dir_ / "model" / "model-00002-of-00002.safetensors"));
}

TEST_F(Safetensors, TensorsWaitOnDiskAndLeaveNothingBehind) {
  const auto spill = dir_ / "spill";
  std::vector<float> big(1 << 20);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<float>(i);
  {
    SafetensorsWriter w(spill);
    w.add("a", DType::F32, {1 << 20}, big.data(), big.size() * 4);
    big[7] = -1;  // the writer keeps its own copy (on disk) of what was added
    w.add("b", DType::F32, {1 << 20}, big.data(), big.size() * 4);
    w.write(dir_ / "m.safetensors");
    EXPECT_TRUE(fs::is_empty(spill));  // the spill file is unlinked from the start
  }
  auto f = SafetensorsFile::open(dir_ / "m.safetensors");
  EXPECT_EQ(reinterpret_cast<const float*>(f->tensor("a").data)[7], 7.0f);
  EXPECT_EQ(reinterpret_cast<const float*>(f->tensor("b").data)[7], -1.0f);
  EXPECT_EQ(reinterpret_cast<const float*>(f->tensor("b").data)[(1 << 20) - 1], static_cast<float>((1 << 20) - 1));
}

TEST_F(Safetensors, IndexNamingAMissingShardOrTensor) {
  SafetensorsWriter w;
  float v[2] = {1, 2};
  w.add("x", DType::F32, {2}, v, 8);
  fs::create_directories(dir_ / "m");
  w.write(dir_ / "m" / "model-00001-of-00002.safetensors");
  std::ofstream(dir_ / "m" / "model.safetensors.index.json")
      << R"({"weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}})";
  std::string e = error_of(dir_ / "m");
  EXPECT_NE(e.find("model.safetensors.index.json: tensor 'y': shard model-00002-of-00002.safetensors does not exist"),
            std::string::npos)
      << e;
  std::ofstream(dir_ / "m" / "model.safetensors.index.json")
      << R"({"weight_map": {"x": "model-00001-of-00002.safetensors", "z": "model-00001-of-00002.safetensors"}})";
  e = error_of(dir_ / "m");
  EXPECT_NE(e.find("tensor 'z': is not in shard model-00001-of-00002.safetensors"), std::string::npos) << e;
}

struct Corrupt {
  const char* name;
  std::string header;
  std::string data;
  int64_t header_len;  // -1: the true length
  std::string message;
};

class CorruptFile : public Safetensors, public ::testing::WithParamInterface<Corrupt> {};
void PrintTo(const Corrupt& c, std::ostream* os) { *os << c.name; }

TEST_P(CorruptFile, IsRejectedWithTheFileAndTensorNamed) {
  const Corrupt& c = GetParam();
  fs::path p = raw(c.header, c.data, c.header_len);
  std::string e = error_of(p);
  EXPECT_EQ(e.rfind(p.string() + ": ", 0), 0u) << "the file is named first: " << e;
  EXPECT_NE(e.find(c.message), std::string::npos) << "got: " << e;
}

const std::string k8(8, 'x');

INSTANTIATE_TEST_SUITE_P(
    Headers, CorruptFile,
    ::testing::Values(
        Corrupt{"header_length_past_the_file", R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}})", k8, 4096,
                "header length 4096 runs past the end"},
        Corrupt{"absurd_header_length", "{}", "", int64_t{1} << 40, "exceeds the 100000000 byte limit"},
        Corrupt{"not_json", "{\"a\": [1, 2", "", -1, "header is not valid JSON"},
        Corrupt{"not_an_object", "[1, 2, 3]", "", -1, "header must be a JSON object"},
        Corrupt{"missing_dtype", R"({"w":{"shape":[2],"data_offsets":[0,8]}})", k8, -1, "tensor 'w': missing 'dtype'"},
        Corrupt{"unknown_dtype", R"({"w":{"dtype":"Q4","shape":[8],"data_offsets":[0,8]}})", k8, -1,
                "tensor 'w': unsupported dtype \"Q4\""},
        Corrupt{"negative_shape", R"({"w":{"dtype":"U8","shape":[-8],"data_offsets":[0,8]}})", k8, -1,
                "tensor 'w': shape [-8] is not non-negative integers"},
        Corrupt{"offsets_not_a_pair", R"({"w":{"dtype":"U8","shape":[8],"data_offsets":[0]}})", k8, -1,
                "tensor 'w': data_offsets [0] must be [begin, end]"},
        Corrupt{"offsets_reversed", R"({"w":{"dtype":"U8","shape":[8],"data_offsets":[8,0]}})", k8, -1,
                "tensor 'w': data_offsets [8, 0] end before they begin"},
        Corrupt{"offsets_past_the_data", R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", k8, -1,
                "tensor 'w': data_offsets [0, 16] run past the 8 bytes of data"},
        Corrupt{"shape_times_dtype_mismatch", R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", k8, -1,
                "tensor 'w': shape [3] of F32 needs 12 bytes but data_offsets span 8"},
        Corrupt{
            "overlapping",
            R"({"a":{"dtype":"U8","shape":[6],"data_offsets":[0,6]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})",
            k8, -1, "tensor 'b': overlaps the tensor before it"},
        Corrupt{
            "duplicate_name",
            R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})",
            k8, -1, "tensor 'a': appears twice in the header"},
        Corrupt{"hole_in_the_data", R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})", k8, -1,
                "tensor 'a': leaves bytes 0..4 of the data area unused"},
        Corrupt{"trailing_bytes", R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", k8, -1,
                "tensors cover 4 of the 8 data bytes"},
        Corrupt{"metadata_not_strings", R"({"__metadata__":{"n":3}})", "", -1,
                "__metadata__ value of 'n' must be a string"},
        Corrupt{"entry_not_an_object", R"({"w":[1,2]})", "", -1, "tensor 'w': entry must be an object"}),
    [](const ::testing::TestParamInfo<Corrupt>& p) { return std::string(p.param.name); });

TEST_F(Safetensors, TooShortAndPickleFiles) {
  fs::path p = dir_ / "short.safetensors";
  std::ofstream(p) << "abc";
  EXPECT_NE(error_of(p).find("file is 3 bytes"), std::string::npos);
  fs::path bin = dir_ / "pytorch_model.bin";
  std::ofstream(bin) << "PK";
  EXPECT_NE(error_of(bin).find("convert it to safetensors"), std::string::npos);
  fs::create_directories(dir_ / "old");
  std::ofstream(dir_ / "old" / "pytorch_model.bin") << "PK";
  EXPECT_NE(error_of(dir_ / "old").find("convert it to safetensors"), std::string::npos);
  EXPECT_NE(error_of(dir_ / "nothing-here").find("cannot open"), std::string::npos);
}

}  // namespace
}  // namespace herd
