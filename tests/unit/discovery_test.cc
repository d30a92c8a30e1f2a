#include "launch/discovery.h"

#include <map>

#include <gtest/gtest.h>

namespace herd::launch {
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
  EXPECT_EQ(l.local_rank, 0);
  // `herd train --workers N` gives each of its workers its LOCAL_RANK (its GPU, its metrics port).
  EXPECT_EQ(detect_launch("coord.herd:29400", env_of({{"LOCAL_RANK", "1"}})).local_rank, 1);
}

TEST(Launch, OpenMpiRanks) {
  Launch l = detect_launch(
      "", env_of({{"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "4"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}}));
  EXPECT_EQ(l.source, "openmpi");
  EXPECT_EQ(*l.rank, 3);
  EXPECT_EQ(*l.world_size, 4);
  EXPECT_EQ(l.local_rank, 1);
  EXPECT_EQ(l.coordinator, "");  // rank 0 hosts it and tells the others over MPI
  EXPECT_FALSE(l.hosts_coordinator);
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
  EXPECT_FALSE(l.hosts_coordinator);
  EXPECT_TRUE(detect_launch("", env_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}}))
                  .hosts_coordinator);
}

TEST(Launch, FlagOverridesTheEnvironmentsCoordinator) {
  Launch l =
      detect_launch("c:1", env_of({{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"MASTER_ADDR", "m"}, {"MASTER_PORT", "2"}}));
  EXPECT_EQ(l.coordinator, "c:1");
  EXPECT_FALSE(l.hosts_coordinator);  // a coordinator of its own runs apart
  Launch e = detect_launch("", env_of({{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"MASTER_ADDR", "m"}, {"MASTER_PORT", "2"},
                                       {"HERD_COORDINATOR", "herd-coordinator:29400"}}));
  EXPECT_EQ(e.coordinator, "herd-coordinator:29400");
  EXPECT_FALSE(e.hosts_coordinator);
}

TEST(Launch, PmiRanks) {
  Launch l = detect_launch("", env_of({{"PMI_RANK", "2"}, {"PMI_SIZE", "3"}, {"MPI_LOCALRANKID", "1"},
                                       {"MASTER_ADDR", "n0"}, {"MASTER_PORT", "29500"}}));
  EXPECT_EQ(l.source, "pmi");
  EXPECT_EQ(*l.rank, 2);
  EXPECT_EQ(*l.world_size, 3);
  EXPECT_EQ(l.local_rank, 1);
  EXPECT_EQ(l.coordinator, "n0:29500");
}

TEST(Launch, SlurmRanksAndTheFirstHostOfTheStep) {
  Launch l = detect_launch("", env_of({{"SLURM_PROCID", "0"},
                                       {"SLURM_NTASKS", "8"},
                                       {"SLURM_LOCALID", "0"},
                                       {"SLURM_JOB_NODELIST", "login[1-2]"},
                                       {"SLURM_STEP_NODELIST", "gpu[07-09,12],cpu1"}}));
  EXPECT_EQ(l.source, "slurm");
  EXPECT_EQ(*l.rank, 0);
  EXPECT_EQ(*l.world_size, 8);
  EXPECT_EQ(l.coordinator, "gpu07:29400");
  EXPECT_TRUE(l.hosts_coordinator);
  Launch r = detect_launch("", env_of({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "1"},
                                       {"SLURM_JOB_NODELIST", "a-[3-4]-b"}, {"MASTER_PORT", "6000"}}));
  EXPECT_EQ(r.coordinator, "a-3-b:6000");
  EXPECT_EQ(r.local_rank, 1);
  EXPECT_FALSE(r.hosts_coordinator);
}

TEST(Launch, FirstHostOfANodeList) {
  EXPECT_EQ(first_host("n1"), "n1");
  EXPECT_EQ(first_host("n1,n2"), "n1");
  EXPECT_EQ(first_host("gpu[007-010]"), "gpu007");
  EXPECT_EQ(first_host("gpu[3,5-6],x"), "gpu3");
  EXPECT_THROW(first_host("gpu[3"), LaunchError);
}

TEST(Launch, TorchrunInsideASlurmAllocationIsTorchruns) {
  Launch l = detect_launch("", env_of({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}, {"SLURM_JOB_NODELIST", "n1"},
                                       {"RANK", "3"}, {"WORLD_SIZE", "4"}, {"MASTER_ADDR", "n1"}, {"MASTER_PORT", "1"}}));
  EXPECT_EQ(l.source, "torchrun");
  EXPECT_EQ(*l.rank, 3);
}

TEST(Launch, KubeflowTrainerVariables) {
  Launch l = detect_launch("", env_of({{"PET_NNODES", "4"},
                                       {"PET_NPROC_PER_NODE", "1"},
                                       {"PET_NODE_RANK", "2"},
                                       {"PET_MASTER_ADDR", "job-node-0-0.job"},
                                       {"PET_MASTER_PORT", "29400"}}));
  EXPECT_EQ(l.source, "kubeflow");
  EXPECT_EQ(*l.rank, 2);
  EXPECT_EQ(*l.world_size, 4);
  EXPECT_EQ(l.coordinator, "job-node-0-0.job:29400");
  EXPECT_FALSE(l.hosts_coordinator);
  Launch two = detect_launch("", env_of({{"PET_NNODES", "2"}, {"PET_NPROC_PER_NODE", "4"}, {"PET_NODE_RANK", "1"},
                                         {"LOCAL_RANK", "3"}, {"PET_MASTER_ADDR", "m"}, {"PET_MASTER_PORT", "1"}}));
  EXPECT_EQ(*two.rank, 7);
  EXPECT_EQ(*two.world_size, 8);
  EXPECT_EQ(two.local_rank, 3);
}

TEST(Launch, KubernetesIndexedJob) {
  Launch l = detect_launch("", env_of({{"JOB_COMPLETION_INDEX", "7"}, {"HERD_COORDINATOR", "herd-coordinator:29400"}}));
  EXPECT_EQ(l.source, "kubernetes");
  EXPECT_EQ(l.coordinator, "herd-coordinator:29400");
  EXPECT_EQ(*l.rank, 7);  // a hint: the coordinator assigns gang ranks
  EXPECT_FALSE(l.hosts_coordinator);
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
  EXPECT_EQ(error_of("nocolon", {}), "--coordinator 'nocolon' is not HOST:PORT");
  EXPECT_EQ(error_of("", {{"HERD_COORDINATOR", "h:0"}}), "HERD_COORDINATOR 'h:0' is not HOST:PORT");
  EXPECT_EQ(error_of("", {{"JOB_COMPLETION_INDEX", "x"}}), "JOB_COMPLETION_INDEX=x is not an integer >= 0");
  EXPECT_EQ(error_of("", {{"JOB_COMPLETION_INDEX", "0"}}),
            "a Kubernetes worker needs --coordinator or HERD_COORDINATOR");
  EXPECT_NE(error_of("", {}).find("no coordinator: pass --coordinator HOST:PORT"), std::string::npos);
  EXPECT_EQ(error_of("", {{"RANK", "0"}, {"WORLD_SIZE", "2"}}),
            "under torchrun the coordinator's address comes from MASTER_ADDR and MASTER_PORT; set it, or "
            "HERD_COORDINATOR");
  EXPECT_EQ(error_of("", {{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}}),
            "under SLURM the coordinator's host comes from SLURM_STEP_NODELIST or SLURM_JOB_NODELIST, and neither is "
            "set");
  EXPECT_EQ(error_of("", {{"PET_NNODES", "2"}, {"PET_NODE_RANK", "2"}}), "PET_NODE_RANK=2 must be below PET_NNODES=2");
  EXPECT_EQ(error_of("", {{"PET_NNODES", "1"}, {"PET_NPROC_PER_NODE", "2"}, {"PET_NODE_RANK", "0"}}),
            "PET_NPROC_PER_NODE=2: start herd under torchrun (which sets LOCAL_RANK), or give each pod one process");
  EXPECT_EQ(error_of("", {{"PMI_RANK", "1"}, {"PMI_SIZE", "1"}}), "PMI_RANK=1 must be below PMI_SIZE=1");
}

}  // namespace
}  // namespace herd::launch
