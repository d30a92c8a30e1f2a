#include "common/launch.h"

#include <map>

#include <gtest/gtest.h>

namespace herd {
namespace {

EnvLookup env_of(std::map<std::string, std::string> vars) {
  return [vars](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

std::string error_of(const std::string& flag, std::map<std::string, std::string> vars) {
  try {
    detect_launch(flag, env_of(std::move(vars)));
  } catch (const LaunchError& e) {
    return e.what();
  }
  return "";
}

TEST(Launch, CoordinatorFlagAlone) {
  Launch l = detect_launch("coord.herd:29400", env_of({}));
  EXPECT_EQ(l.source, "flags");
  EXPECT_EQ(l.coordinator, "coord.herd:29400");
  EXPECT_FALSE(l.rank.has_value());
}

TEST(Launch, OpenMpiRanks) {
  Launch l = detect_launch(
      "", env_of({{"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "4"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}}));
  EXPECT_EQ(l.source, "openmpi");
  EXPECT_EQ(*l.rank, 3);
  EXPECT_EQ(*l.world_size, 4);
  EXPECT_EQ(l.local_rank, 1);
  EXPECT_EQ(l.coordinator, "");  // rank 0 hosts it
}

TEST(Launch, OpenMpiWinsOverTorchrun) {
  Launch l = detect_launch(
      "", env_of({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"RANK", "1"}, {"WORLD_SIZE", "2"}}));
  EXPECT_EQ(l.source, "openmpi");
  EXPECT_EQ(*l.rank, 0);
}

TEST(Launch, TorchrunEnvironment) {
  Launch l = detect_launch("", env_of({{"RANK", "1"},
                                       {"WORLD_SIZE", "2"},
                                       {"LOCAL_RANK", "1"},
                                       {"MASTER_ADDR", "10.0.0.5"},
                                       {"MASTER_PORT", "29500"}}));
  EXPECT_EQ(l.source, "torchrun");
  EXPECT_EQ(*l.rank, 1);
  EXPECT_EQ(l.local_rank, 1);
  EXPECT_EQ(l.coordinator, "10.0.0.5:29500");
}

TEST(Launch, FlagOverridesTheEnvironmentsCoordinator) {
  Launch l =
      detect_launch("c:1", env_of({{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"MASTER_ADDR", "m"}, {"MASTER_PORT", "2"}}));
  EXPECT_EQ(l.coordinator, "c:1");
}

TEST(Launch, KubernetesIndexedJob) {
  Launch l = detect_launch("", env_of({{"JOB_COMPLETION_INDEX", "7"}, {"HERD_COORDINATOR", "herd-coordinator:29400"}}));
  EXPECT_EQ(l.source, "kubernetes");
  EXPECT_EQ(l.coordinator, "herd-coordinator:29400");
  EXPECT_FALSE(l.rank.has_value());  // the coordinator assigns ranks
}

TEST(Launch, MalformedInputNamesTheVariable) {
  EXPECT_EQ(error_of("", {{"RANK", "two"}, {"WORLD_SIZE", "4"}}), "RANK=two is not an integer >= 0");
  EXPECT_EQ(error_of("", {{"RANK", "4"}, {"WORLD_SIZE", "4"}}), "RANK=4 must be below WORLD_SIZE=4");
  EXPECT_EQ(error_of("", {{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "0"}}),
            "OMPI_COMM_WORLD_SIZE=0 is not an integer >= 1");
  EXPECT_EQ(error_of("", {{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"MASTER_ADDR", "h"}}),
            "MASTER_ADDR and MASTER_PORT must be set together");
  EXPECT_EQ(error_of("", {{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "99999"}}),
            "MASTER_ADDR:MASTER_PORT 'h:99999' is not HOST:PORT");
  EXPECT_EQ(error_of("nocolon", {}), "coordinator 'nocolon' is not HOST:PORT");
  EXPECT_EQ(error_of("", {{"JOB_COMPLETION_INDEX", "x"}}), "JOB_COMPLETION_INDEX=x is not an integer >= 0");
  EXPECT_EQ(error_of("", {{"JOB_COMPLETION_INDEX", "0"}}),
            "a Kubernetes worker needs --coordinator or HERD_COORDINATOR");
  EXPECT_NE(error_of("", {}).find("no coordinator: pass --coordinator HOST:PORT"), std::string::npos);
}

}  // namespace
}  // namespace herd
