#include "launch/discovery.h"

#include <charconv>

#include <fmt/format.h>

namespace herd::launch {

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

int optional_int(const EnvLookup& env, const std::string& name, int fallback) {
  return env(name) ? parse_int(env, name, 0) : fallback;
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

void ranks(Launch& l, const EnvLookup& env, const std::string& rank_var, const std::string& size_var) {
  l.rank = parse_int(env, rank_var, 0);
  l.world_size = parse_int(env, size_var, 1);
  if (*l.rank >= *l.world_size) {
    throw LaunchError(fmt::format("{}={} must be below {}={}", rank_var, *l.rank, size_var, *l.world_size));
  }
}

// ADDR_VAR:PORT_VAR, both or neither.
std::string address_from(const EnvLookup& env, const std::string& addr_var, const std::string& port_var) {
  auto addr = env(addr_var);
  auto port = env(port_var);
  if (addr.has_value() != port.has_value()) {
    throw LaunchError(fmt::format("{} and {} must be set together", addr_var, port_var));
  }
  if (!addr) return "";
  const std::string out = *addr + ":" + *port;
  check_address(addr_var + ":" + port_var, out);
  return out;
}

}  // namespace

std::string first_host(const std::string& nodelist) {
  // The first entry: up to a comma outside brackets.
  size_t end = 0;
  for (int depth = 0; end < nodelist.size() && (depth > 0 || nodelist[end] != ','); ++end) {
    depth += nodelist[end] == '[' ? 1 : nodelist[end] == ']' ? -1 : 0;
  }
  const std::string entry = nodelist.substr(0, end);
  const size_t open = entry.find('[');
  if (open == std::string::npos) return entry;
  const size_t close = entry.find(']', open);
  if (close == std::string::npos) throw LaunchError(fmt::format("node list '{}' has an unclosed '['", nodelist));
  // The first number of the first range keeps its zero padding: "07-09" is "07".
  const std::string ranges = entry.substr(open + 1, close - open - 1);
  const std::string first = ranges.substr(0, ranges.find_first_of(",-"));
  if (first.empty()) throw LaunchError(fmt::format("node list '{}' has an empty range", nodelist));
  return entry.substr(0, open) + first + entry.substr(close + 1);
}

Launch detect_launch(const std::string& coordinator_flag, const EnvLookup& env) {
  Launch l;
  std::string own;  // the address the launcher's own variables give
  if (env("OMPI_COMM_WORLD_RANK")) {
    l.source = "openmpi";
    ranks(l, env, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE");
    l.local_rank = optional_int(env, "OMPI_COMM_WORLD_LOCAL_RANK", 0);
  } else if (env("PMI_RANK")) {
    l.source = "pmi";
    ranks(l, env, "PMI_RANK", "PMI_SIZE");
    l.local_rank = optional_int(env, "MPI_LOCALRANKID", 0);
    own = address_from(env, "MASTER_ADDR", "MASTER_PORT");
  } else if (env("RANK") && env("WORLD_SIZE")) {
    l.source = "torchrun";
    ranks(l, env, "RANK", "WORLD_SIZE");
    l.local_rank = optional_int(env, "LOCAL_RANK", 0);
    own = address_from(env, "MASTER_ADDR", "MASTER_PORT");
  } else if (env("PET_NNODES")) {
    l.source = "kubeflow";
    const int nodes = parse_int(env, "PET_NNODES", 1);
    const int per_node = env("PET_NPROC_PER_NODE") ? parse_int(env, "PET_NPROC_PER_NODE", 1) : 1;
    const int node = parse_int(env, "PET_NODE_RANK", 0);
    if (node >= nodes) throw LaunchError(fmt::format("PET_NODE_RANK={} must be below PET_NNODES={}", node, nodes));
    if (per_node > 1 && !env("LOCAL_RANK")) {
      throw LaunchError(fmt::format("PET_NPROC_PER_NODE={}: start herd under torchrun (which sets LOCAL_RANK), or "
                                    "give each pod one process",
                                    per_node));
    }
    l.local_rank = optional_int(env, "LOCAL_RANK", 0);
    if (l.local_rank >= per_node) {
      throw LaunchError(fmt::format("LOCAL_RANK={} must be below PET_NPROC_PER_NODE={}", l.local_rank, per_node));
    }
    l.rank = node * per_node + l.local_rank;
    l.world_size = nodes * per_node;
    own = address_from(env, "PET_MASTER_ADDR", "PET_MASTER_PORT");
  } else if (env("SLURM_PROCID")) {
    l.source = "slurm";
    ranks(l, env, "SLURM_PROCID", "SLURM_NTASKS");
    l.local_rank = optional_int(env, "SLURM_LOCALID", 0);
    const auto nodes = env("SLURM_STEP_NODELIST") ? env("SLURM_STEP_NODELIST") : env("SLURM_JOB_NODELIST");
    if (nodes && !nodes->empty()) {
      const int port = optional_int(env, "MASTER_PORT", kDefaultCoordinatorPort);
      own = fmt::format("{}:{}", first_host(*nodes), port);
      check_address("the first host of the node list, MASTER_PORT", own);
    }
  } else if (env("JOB_COMPLETION_INDEX")) {
    l.source = "kubernetes";
    l.rank = parse_int(env, "JOB_COMPLETION_INDEX", 0);
    l.local_rank = optional_int(env, "LOCAL_RANK", 0);
  } else {
    l.source = "flags";
    l.local_rank = optional_int(env, "LOCAL_RANK", 0);
  }

  const std::string named = !coordinator_flag.empty() ? coordinator_flag : env("HERD_COORDINATOR").value_or("");
  if (!named.empty()) {
    check_address(!coordinator_flag.empty() ? "--coordinator" : "HERD_COORDINATOR", named);
    l.coordinator = named;
    return l;
  }
  if (l.source == "flags") {
    throw LaunchError(
        "no coordinator: pass --coordinator HOST:PORT (or set HERD_COORDINATOR), or launch with mpirun, srun or "
        "torchrun");
  }
  if (l.source == "kubernetes") throw LaunchError("a Kubernetes worker needs --coordinator or HERD_COORDINATOR");
  if (l.source != "openmpi" && own.empty()) {
    throw LaunchError(l.source == "slurm"
                          ? std::string("under SLURM the coordinator's host comes from SLURM_STEP_NODELIST or "
                                        "SLURM_JOB_NODELIST, and neither is set")
                          : fmt::format("under {} the coordinator's address comes from {}; set it, or HERD_COORDINATOR",
                                        l.source,
                                        l.source == "kubeflow" ? "PET_MASTER_ADDR and PET_MASTER_PORT"
                                                               : "MASTER_ADDR and MASTER_PORT"));
  }
  l.coordinator = own;
  l.hosts_coordinator = *l.rank == 0;
  return l;
}

}  // namespace herd::launch
