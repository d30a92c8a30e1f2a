// The Gloo backend with ranks as threads of this process, connected over loopback
// through an in-memory store: every operation against sums and copies computed
// here, for 2, 3 and 4 ranks; and errors that name the operation, rank and attempt.
#include <dlfcn.h>

#include <filesystem>
#include <thread>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "worker/comm/collective.h"

namespace herd::comm {
namespace {

// Runs fn(collective) on `size` ranks at once; rethrows the first failure.
void on_ranks(int size, const std::function<void(Collective&)>& fn, std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  InMemoryStore store;
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(size));
  for (int r = 0; r < size; ++r) {
    threads.emplace_back([&, r] {
      try {
        CollectiveOptions options;
        options.rank = r;
        options.size = size;
        options.attempt = 7;
        options.hostname = "127.0.0.1";
        options.timeout = timeout;
        auto c = connect("gloo", store, options);
        fn(*c);
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

torch::Tensor rank_data(int rank, int64_t n, torch::ScalarType dtype = torch::kFloat32) {
  return (torch::arange(n, torch::kFloat64) * (rank + 1) + 0.25 * rank).to(dtype);
}

class GlooRanks : public ::testing::TestWithParam<int> {};

TEST_P(GlooRanks, EveryOperationMatchesItsDefinition) {
  const int size = GetParam();
  const int64_t n = 1000;  // not a multiple of anything the transport likes
  on_ranks(size, [&](Collective& c) {
    const int r = c.rank();
    ASSERT_EQ(c.size(), size);
    // all_gather of bytes (uint8) and floats; two in flight at once.
    auto in_bytes = (torch::arange(n, torch::kInt64) + r * 7).remainder(256).to(torch::kUInt8);
    auto out_bytes = torch::empty({size * n}, torch::kUInt8);
    auto in_f = rank_data(r, n);
    auto out_f = torch::empty({size * n}, torch::kFloat32);
    auto w1 = c.all_gather(out_bytes, in_bytes);
    auto w2 = c.all_gather(out_f, in_f);
    w1.wait();
    w2.wait();
    for (int q = 0; q < size; ++q) {
      EXPECT_TRUE(torch::equal(out_bytes.slice(0, q * n, (q + 1) * n),
                               (torch::arange(n, torch::kInt64) + q * 7).remainder(256).to(torch::kUInt8)));
      EXPECT_TRUE(torch::equal(out_f.slice(0, q * n, (q + 1) * n), rank_data(q, n)));
    }
    // all_reduce: the sum over ranks, in float32, float64 and int64.
    for (auto dtype : {torch::kFloat32, torch::kFloat64, torch::kInt64}) {
      auto t = rank_data(r, n, dtype);
      c.all_reduce(t).wait();
      auto expect = torch::zeros({n}, torch::kFloat64);
      for (int q = 0; q < size; ++q) expect += rank_data(q, n, dtype).to(torch::kFloat64);
      EXPECT_TRUE(torch::allclose(t.to(torch::kFloat64), expect, 1e-6, 1e-6)) << dtype;
    }
    // reduce_scatter: chunk r of the sum.
    auto in_rs = rank_data(r, size * n);
    auto out_rs = torch::empty({n}, torch::kFloat32);
    c.reduce_scatter(out_rs, in_rs).wait();
    auto sum = torch::zeros({size * n}, torch::kFloat32);
    for (int q = 0; q < size; ++q) sum += rank_data(q, size * n);
    EXPECT_TRUE(torch::allclose(out_rs, sum.slice(0, r * n, (r + 1) * n)));
    // broadcast from the last rank.
    auto b = rank_data(r, n);
    c.broadcast(b, size - 1).wait();
    EXPECT_TRUE(torch::equal(b, rank_data(size - 1, n)));
    c.barrier();
  });
}

INSTANTIATE_TEST_SUITE_P(Sizes, GlooRanks, ::testing::Values(2, 3, 4));

// The Gloo module is loaded with RTLD_DEEPBIND, which binds its references and
// libgloo's in their own dependencies before the rest of the process. Those must
// hold Gloo alone: libc's malloc or libstdc++'s state found there would differ from
// what the rest of the process uses wherever a library loaded earlier defines them.
TEST(Collective, TheGlooModulesOwnScopeHoldsGlooAlone) {
  on_ranks(2, [](Collective& c) { c.barrier(); });
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  ASSERT_FALSE(ec);
  const auto path = exe.parent_path().parent_path() / "lib" / "libherd_gloo.so";
  void* module = ::dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD);
  ASSERT_NE(module, nullptr) << path;
  EXPECT_NE(::dlsym(module, "_ZN4gloo9transport3tcp12CreateDeviceERKNS1_4attrE"), nullptr);  // Gloo is there
  for (const char* symbol : {"malloc", "free", "_Znwm", "_ZSt11__once_call", "__once_proxy", "pthread_once"}) {
    EXPECT_EQ(::dlsym(module, symbol), nullptr) << symbol;
  }
}

// Runs only as the ctest entries GlooPreloaded.*, which preload a library that
// defines symbols another library in the process defines too (a static libstdc++'s
// std::call_once state; jemalloc's malloc and free): HERD_TEST_INTERPOSED names one
// of them as symbol@library. Loading libgloo with RTLD_DEEPBIND once bound such
// symbols to their home library in libgloo and to the preloaded one elsewhere,
// and crashed.
TEST(GlooPreloaded, WorksWhenALibraryLoadedFirstRedefinesSymbols) {
  const char* env = std::getenv("HERD_TEST_INTERPOSED");
  ASSERT_NE(env, nullptr) << "run through ctest, which sets HERD_TEST_INTERPOSED and LD_PRELOAD";
  const std::string spec = env;
  const auto at = spec.find('@');
  ASSERT_NE(at, std::string::npos) << spec;
  const std::string symbol = spec.substr(0, at), library = spec.substr(at + 1);
  void* home = ::dlopen(library.c_str(), RTLD_NOW | RTLD_NOLOAD);
  ASSERT_NE(home, nullptr) << library;
  ASSERT_NE(::dlsym(RTLD_DEFAULT, symbol.c_str()), ::dlsym(home, symbol.c_str()))
      << symbol << " has one definition here: nothing was preloaded";
  on_ranks(2, [](Collective& c) {
    auto t = rank_data(c.rank(), 10);
    c.all_reduce(t).wait();
    EXPECT_TRUE(torch::allclose(t, rank_data(0, 10) + rank_data(1, 10)));
    auto b = rank_data(c.rank(), 10);
    c.broadcast(b, 1).wait();
    EXPECT_TRUE(torch::equal(b, rank_data(1, 10)));
  });
}

TEST(Collective, OneRankIsLocalAndCopies) {
  InMemoryStore store;
  auto c = connect("local", store, CollectiveOptions{});
  EXPECT_EQ(c->backend(), "local");
  auto in = rank_data(0, 10), out = torch::zeros({10});
  c->all_gather(out, in).wait();
  EXPECT_TRUE(torch::equal(out, in));
  auto t = in.clone();
  c->all_reduce(t).wait();
  EXPECT_TRUE(torch::equal(t, in));
}

TEST(Collective, ARankThatNeverArrivesIsATimeoutNamingTheRank) {
  InMemoryStore store;
  CollectiveOptions options;
  options.rank = 1;
  options.size = 2;
  options.attempt = 3;
  options.hostname = "127.0.0.1";
  options.timeout = std::chrono::milliseconds(300);
  try {
    connect("gloo", store, options);
    FAIL() << "connected without rank 0";
  } catch (const CommError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("rank 1 of 2 (attempt 3)"), std::string::npos) << what;
    EXPECT_NE(what.find("was not set within 300 ms"), std::string::npos) << what;
  }
}

TEST(Collective, APeerThatStopsTakingPartIsAnErrorNotAHang) {
  // Rank 1 leaves after the first all_reduce; rank 0's second one must fail
  // within its timeout with the operation, rank and attempt in the message.
  std::string message;
  on_ranks(
      2,
      [&](Collective& c) {
        auto t = torch::ones({4});
        c.all_reduce(t).wait();
        if (c.rank() == 1) return;
        try {
          c.all_reduce(t).wait();
        } catch (const CommError& e) {
          message = e.what();
        }
      },
      std::chrono::milliseconds(500));
  EXPECT_NE(message.find("all_reduce on rank 0 of 2 (attempt 7)"), std::string::npos) << message;
}

TEST(Collective, WrongShapesAreRefusedAtTheCall) {
  on_ranks(2, [](Collective& c) {
    auto in = torch::zeros({4}), out = torch::zeros({7});
    EXPECT_THROW(c.all_gather(out, in), std::invalid_argument);
    auto ints = torch::zeros({4}, torch::kInt32);
    EXPECT_THROW(c.all_reduce(ints), std::invalid_argument);
    c.barrier();
  });
}

}  // namespace
}  // namespace herd::comm
