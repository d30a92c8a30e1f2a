"""The deploy kit's launch lines run as docs/deploy.md gives them, each with 2 ranks on this host,
and train what `herd train --workers 2` trains: deploy/mpi/herd-mpirun, and deploy/slurm/herd.sbatch
submitted to a real single-node SLURM cluster (munged, slurmctld and slurmd started here)."""
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from runs import adapter, assert_trains_as, config, documented, free_port, losses

BIN = Path(os.environ["HERD_BIN"])
SRC = Path(os.environ["HERD_SOURCE_DIR"])


def job(d, model):
    d.mkdir(exist_ok=True)
    return config(d / "c.yaml", model, d, accumulation=2, steps=8, extra="distributed: {world_size: 2}\n")


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    """`herd train --workers 2` on the job: its losses and adapter."""
    d = tmp_path_factory.mktemp("reference")
    out = subprocess.run([str(BIN / "herd"), "train", str(job(d, model)), "--workers", "2"], capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr
    return losses(d), adapter(d)


def test_the_mpirun_line_trains_as_herd_train_workers_2(model, tmp_path, reference):
    line = documented("mpirun", "deploy/mpi/herd-mpirun")[0]
    assert re.fullmatch(r"HERD_BIN=build/bin/herd deploy/mpi/herd-mpirun hostfile \d+ job.yaml", line), line
    (tmp_path / "hostfile").write_text("localhost slots=2\n")
    # As docs/deploy.md runs it, on 2 ranks of this host: MPI over loopback, root allowed in a container.
    out = subprocess.run([str(SRC / "deploy" / "mpi" / "herd-mpirun"), str(tmp_path / "hostfile"), "2",
                          str(job(tmp_path, model))], capture_output=True, text=True, timeout=300, cwd=SRC,
                         env=dict(os.environ, HERD_BIN=str(BIN / "herd"), HERD_MPI_IFACE="lo",
                                  HERD_MPIRUN_ARGS="--allow-run-as-root", OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "launched by openmpi (rank 0 of 2)" in out.stdout, out.stdout
    assert "Warning" not in out.stderr, out.stderr  # every -x names a variable that is set
    assert_trains_as(tmp_path, *reference)


@pytest.fixture
def slurm(tmp_path_factory):
    """A one-node SLURM cluster on this machine: munged, slurmctld and slurmd with a generated
    slurm.conf (no accounting database: jobs stay in squeue for an hour after they end). Yields the
    environment that reaches it."""
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "log"):
        (d / sub).mkdir()
    (d / "munge.key").write_bytes(os.urandom(1024))
    (d / "munge.key").chmod(0o400)
    host = socket.gethostname().split(".")[0]
    (d / "slurm.conf").write_text(f"""ClusterName=herdtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
AuthInfo=socket={d}/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MinJobAge=3600
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    env = dict(os.environ, SLURM_CONF=str(d / "slurm.conf"))
    subprocess.run(["munged", "--force", f"--socket={d}/munge.sock", f"--key-file={d}/munge.key",
                    f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log", f"--seed-file={d}/munge.seed"],
                   check=True)
    subprocess.run(["slurmctld", "-f", str(d / "slurm.conf")], check=True, env=env)
    subprocess.run(["slurmd", "-f", str(d / "slurm.conf")], check=True, env=env)
    try:
        deadline = time.time() + 60
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,
                                           env=env).stdout:
            assert time.time() < deadline, (d / "log" / "slurmctld.log").read_text()
            time.sleep(0.5)
        yield env
    finally:
        for daemon in ("slurmd", "slurmctld", "munged"):
            pid = d / f"{daemon}.pid"
            if pid.exists():
                try:
                    os.kill(int(pid.read_text()), 15)
                except ProcessLookupError:
                    pass


def test_the_sbatch_script_trains_as_herd_train_workers_2_on_a_real_slurm(model, tmp_path, reference, slurm):
    line = documented("SLURM", "deploy/slurm/herd.sbatch")[0]
    assert re.fullmatch(r"HERD_BIN=\S+ sbatch --nodes=\d+ --ntasks-per-node=\d+ --gpus-per-node=\d+ "
                        r"deploy/slurm/herd.sbatch job.yaml", line), line
    # As docs/deploy.md submits it, with this node's resources: 2 tasks, no GPUs.
    out = subprocess.run(["sbatch", "--parsable", "--wait", "--nodes=1", "--ntasks=2", f"--chdir={tmp_path}",
                          str(SRC / "deploy" / "slurm" / "herd.sbatch"), str(job(tmp_path, model))],
                         capture_output=True, text=True, timeout=300,
                         env=dict(slurm, HERD_BIN=str(BIN / "herd"), MASTER_PORT=str(free_port()),
                                  OMP_NUM_THREADS="1"))
    job_id = out.stdout.strip().split(";")[0]
    log = "".join(p.read_text() for p in tmp_path.glob("herd-*.out"))
    assert out.returncode == 0, out.stderr + log
    state = subprocess.run(["squeue", "-h", "-j", job_id, "-t", "all", "-o", "%T"], capture_output=True, text=True,
                           env=slurm)
    assert state.stdout.strip() == "COMPLETED", state.stdout + state.stderr
    assert "launched by slurm (rank 0 of 2)" in log and "(hosted here)" in log, log
    assert_trains_as(tmp_path, *reference)
