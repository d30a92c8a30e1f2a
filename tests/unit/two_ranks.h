// Two ranks as threads of this process, Gloo between them over loopback.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "worker/comm/collective.h"
#include "worker/comm/store.h"

namespace herd::comm {

// fn(rank, its group) on two ranks at once: what each returned, or the exception it threw.
inline std::vector<std::string> two_ranks(const std::function<std::string(int, Collective&)>& fn) {
  InMemoryStore store;
  std::vector<std::string> failures(2);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      try {
        CollectiveOptions co;
        co.rank = r;
        co.size = 2;
        co.hostname = "127.0.0.1";
        co.timeout = std::chrono::seconds(30);
        auto group = connect("gloo", store, co);
        failures[static_cast<size_t>(r)] = fn(r, *group);
      } catch (const std::exception& e) {
        failures[static_cast<size_t>(r)] = e.what();
      }
    });
  }
  for (auto& t : ranks) t.join();
  return failures;
}

}  // namespace herd::comm
