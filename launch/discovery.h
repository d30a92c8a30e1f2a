// Who this worker is and where its coordinator is, from the flags and the
// environment of whatever launched it. Validated where it enters: a malformed
// variable is an error that names it.
//
// Sources, innermost launcher first (a torchrun inside an sbatch script sees
// SLURM_PROCID of the batch step too; mpirun inside an allocation likewise):
//   --coordinator HOST:PORT (the flag) and HERD_COORDINATOR name a coordinator that
//     runs apart (herd-coordinator); no rank of this launch hosts one then.
//   openmpi     OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK; rank 0 hosts the
//               coordinator and tells the others its address over MPI.
//   pmi         PMI_RANK, PMI_SIZE (MPICH, Intel MPI); MPI_LOCALRANKID.
//   torchrun    RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT.
//   kubeflow    PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR,
//               PET_MASTER_PORT (Kubeflow Trainer's torch policy), LOCAL_RANK.
//   slurm       SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; the first host of
//               SLURM_STEP_NODELIST (else SLURM_JOB_NODELIST), port MASTER_PORT or 29400.
//   kubernetes  JOB_COMPLETION_INDEX (an Indexed Job: a rank hint) with HERD_COORDINATOR.
// Under pmi, torchrun, kubeflow and slurm, rank 0 hosts the coordinator at the
// address every rank computes, unless the flag or HERD_COORDINATOR names one.
#pragma once

#include <optional>
#include <stdexcept>
#include <string>

#include "common/env.h"

namespace herd::launch {

constexpr int kDefaultCoordinatorPort = 29400;

struct Launch {
  std::string source;       // "flags", "openmpi", "pmi", "torchrun", "kubeflow", "slurm" or "kubernetes"
  std::string coordinator;  // HOST:PORT; empty under openmpi when rank 0 hosts (the address travels over MPI)
  bool hosts_coordinator = false;  // this process serves the job's coordinator
  std::optional<int> rank;         // the launcher's rank (a hint: the coordinator assigns gang ranks)
  std::optional<int> world_size;
  int local_rank = 0;  // picks the GPU
};

class LaunchError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

Launch detect_launch(const std::string& coordinator_flag, const EnvLookup& env);

// The first host of a SLURM node list: "gpu[07-09,12],cpu1" is "gpu07".
std::string first_host(const std::string& nodelist);

}  // namespace herd::launch
