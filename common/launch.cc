#include "common/launch.h"

#include <charconv>
#include <cstdlib>

#include <fmt/format.h>

namespace herd {

EnvLookup process_env() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
}

namespace {

int parse_int(const EnvLookup& env, const std::string& name, int min) {
  std::string v = env(name).value_or("");
  int out = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc() || end != v.data() + v.size() || out < min) {
    throw LaunchError(fmt::format("{}={} is not an integer >= {}", name, v, min));
  }
  return out;
}

// HOST:PORT with a non-empty host and a port in 1..65535.
void check_address(const std::string& what, const std::string& address) {
  size_t colon = address.rfind(':');
  int port = 0;
  bool ok = colon != std::string::npos && colon > 0;
  if (ok) {
    auto [end, ec] = std::from_chars(address.data() + colon + 1, address.data() + address.size(), port);
    ok = ec == std::errc() && end == address.data() + address.size() && port >= 1 && port <= 65535;
  }
  if (!ok) throw LaunchError(fmt::format("{} '{}' is not HOST:PORT", what, address));
}

void check_rank(Launch& l, const std::string& rank_var, const std::string& size_var) {
  if (*l.rank >= *l.world_size) {
    throw LaunchError(fmt::format("{}={} must be below {}={}", rank_var, *l.rank, size_var, *l.world_size));
  }
}

}  // namespace

Launch detect_launch(const std::string& coordinator_flag, const EnvLookup& env) {
  Launch l;
  if (env("OMPI_COMM_WORLD_RANK")) {
    l.source = "openmpi";
    l.rank = parse_int(env, "OMPI_COMM_WORLD_RANK", 0);
    l.world_size = parse_int(env, "OMPI_COMM_WORLD_SIZE", 1);
    l.local_rank = env("OMPI_COMM_WORLD_LOCAL_RANK") ? parse_int(env, "OMPI_COMM_WORLD_LOCAL_RANK", 0) : 0;
    check_rank(l, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE");
  } else if (env("RANK") && env("WORLD_SIZE")) {
    l.source = "torchrun";
    l.rank = parse_int(env, "RANK", 0);
    l.world_size = parse_int(env, "WORLD_SIZE", 1);
    l.local_rank = env("LOCAL_RANK") ? parse_int(env, "LOCAL_RANK", 0) : 0;
    check_rank(l, "RANK", "WORLD_SIZE");
    auto addr = env("MASTER_ADDR");
    auto port = env("MASTER_PORT");
    if (addr.has_value() != port.has_value()) {
      throw LaunchError("MASTER_ADDR and MASTER_PORT must be set together");
    }
    if (addr) {
      l.coordinator = *addr + ":" + *port;
      check_address("MASTER_ADDR:MASTER_PORT", l.coordinator);
    }
  } else if (env("JOB_COMPLETION_INDEX")) {
    l.source = "kubernetes";
    parse_int(env, "JOB_COMPLETION_INDEX", 0);  // validated; ranks come from the coordinator
    l.coordinator = env("HERD_COORDINATOR").value_or("");
    if (l.coordinator.empty() && coordinator_flag.empty()) {
      throw LaunchError("a Kubernetes worker needs --coordinator or HERD_COORDINATOR");
    }
  } else {
    l.source = "flags";
  }
  if (!coordinator_flag.empty()) l.coordinator = coordinator_flag;
  if (!l.coordinator.empty()) check_address("coordinator", l.coordinator);
  if (l.source == "flags" && l.coordinator.empty()) {
    throw LaunchError(
        "no coordinator: pass --coordinator HOST:PORT, or launch with mpirun or torchrun "
        "(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)");
  }
  return l;
}

}  // namespace herd
