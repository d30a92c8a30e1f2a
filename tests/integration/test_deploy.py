"""The deploy kit's launch lines run as docs/deploy.md gives them, each with 2 ranks on this host,
and train what `herd train --workers 2` trains: deploy/mpi/herd-mpirun, and deploy/slurm/herd.sbatch
submitted to a real single-node SLURM cluster (munged, slurmctld and slurmd started here), also
stopped in each way SLURM stops a job and submitted again."""
import os
import random
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from runs import adapter, assert_trains_as, config, documented, events, free_port, losses

BIN = Path(os.environ["HERD_BIN"])
SRC = Path(os.environ["HERD_SOURCE_DIR"])


def job(d, model, steps=8, distributed=""):
    d.mkdir(exist_ok=True)
    return config(d / "c.yaml", model, d, accumulation=2, steps=steps,
                  extra=f"distributed: {{world_size: 2{distributed}}}\n")


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


def master_port():
    """A free port below the ephemeral range: srun listens on ephemeral ports of its own, and one of
    them given as MASTER_PORT keeps rank 0's coordinator from listening."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(max(1024, low - 10000), low), 100):
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
                return port
            except OSError:
                continue
    raise AssertionError("no free port below the ephemeral range")


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
        # A test that failed half-way leaves no job running past the cluster: its tasks are killed,
        # and the cluster stops once the job has ended.
        subprocess.run(["scancel", "--signal=KILL", f"--user={os.getuid()}"], env=env, capture_output=True)
        deadline = time.time() + 60
        while subprocess.run(["squeue", "-h"], capture_output=True, text=True, env=env).stdout.strip():
            if time.time() > deadline:
                break
            time.sleep(0.5)
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
                         env=dict(slurm, HERD_BIN=str(BIN / "herd"), MASTER_PORT=str(master_port()),
                                  OMP_NUM_THREADS="1"))
    job_id = out.stdout.strip().split(";")[0]
    log = "".join(p.read_text() for p in tmp_path.glob("herd-*.out"))
    assert out.returncode == 0, out.stderr + log
    state = subprocess.run(["squeue", "-h", "-j", job_id, "-t", "all", "-o", "%T"], capture_output=True, text=True,
                           env=slurm)
    assert state.stdout.strip() == "COMPLETED", state.stdout + state.stderr
    assert "launched by slurm (rank 0 of 2)" in log and "(hosted here)" in log, log
    assert_trains_as(tmp_path, *reference)


# Each way SLURM stops a running job: scancel's arguments, or sbatch's for the time limit's signal
# (the script's --signal=TERM@120 with a limit that brings it within seconds: SLURM looks at time
# limits every 30 s).
STOPS = {
    "scancel": (["scancel"], []),
    "scancel --signal=TERM": (["scancel", "--signal=TERM"], []),
    "scancel --full --signal=TERM": (["scancel", "--full", "--signal=TERM"], []),
    "the time limit's SIGTERM": (None, ["--time=2", "--signal=TERM@110"]),
}
LONG = 300  # steps: a run that is still training when SLURM's signal comes


def herd_pids(job_id, env):
    """The job's `herd worker` processes (this host is its only node)."""
    out = subprocess.run(["scontrol", "listpids", job_id], capture_output=True, text=True, env=env).stdout
    pids = [int(line.split()[0]) for line in out.splitlines()[1:] if line.split() and line.split()[0].isdigit()]
    argv = {p: Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0") for p in pids if Path(f"/proc/{p}").exists()}
    return [p for p, a in argv.items() if a[0] == str(BIN / "herd").encode() and a[1:2] == [b"worker"]]


def proc_status(pid):
    """/proc/PID/status as a dict; None once the process has ended."""
    try:
        return dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except FileNotFoundError:
        return None


def stopped(pid):
    """Whether a process we sent SIGSTOP has stopped (the signal is delivered asynchronously), or ended."""
    status = proc_status(pid)
    return status is None or status["State"].strip().startswith("T")


def signalled(pid, signum):
    """Whether a process we stopped (SIGSTOP) got `signum`: pending, or SLURM continued it to take it
    (it sends SIGCONT first), or it has ended already."""
    status = proc_status(pid)
    if status is None:
        return True
    pending = int(status["SigPnd"], 16) | int(status["ShdPnd"], 16)
    return bool(pending >> (signum - 1) & 1) or not status["State"].strip().startswith("T")


def task_exits(log):
    """Task -> exit code, from srun's lines ("task 1: ..." or "tasks 0-1: Exited with exit code 130")."""
    out = {}
    for tasks, code in re.findall(r"tasks? ([\d,-]+): Exited with exit code (\d+)", log):
        for part in tasks.split(","):
            first, _, last = part.partition("-")
            out.update({task: int(code) for task in range(int(first), int(last or first) + 1)})
    return out


def job_state(job_id, env):
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, env=env).stdout
    return dict(re.findall(r"(\w+)=(\S+)", out))


def stop_while_training(d, slurm, scancel, sbatch_args):
    """Submits the job, lets it train a step and stops it as named; answers the job's record and
    its log."""
    before = len(events(d))
    out = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--ntasks=2", f"--chdir={d}", *sbatch_args,
                          str(SRC / "deploy" / "slurm" / "herd.sbatch"), str(d / "c.yaml")],
                         capture_output=True, text=True, timeout=60, env=slurm, check=True)
    job_id = out.stdout.strip().split(";")[0]
    deadline = time.time() + 120
    while len(events(d)) <= before:
        assert time.time() < deadline, "".join(p.read_text() for p in d.glob("herd-*.out"))
        time.sleep(0.05)
    if scancel:
        subprocess.run([*scancel, job_id], check=True, env=slurm)
    else:
        # Both ranks wait, stopped, until the time limit's SIGTERM is pending in each: that SLURM
        # sent it, and not that the run was short, is what ends them.
        pids = herd_pids(job_id, slurm)
        assert len(pids) == 2, pids
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        while not all(stopped(pid) for pid in pids):  # else a running one reads as continued by SLURM
            assert time.time() < deadline, pids
            time.sleep(0.01)
        while not all(signalled(pid, signal.SIGTERM) for pid in pids):
            assert time.time() < deadline + 60, "no SIGTERM before the time limit"
            time.sleep(0.2)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    while job_state(job_id, slurm).get("JobState") in ("PENDING", "RUNNING", "COMPLETING"):
        assert time.time() < deadline + 120
        time.sleep(0.2)
    return job_state(job_id, slurm), "".join(p.read_text() for p in d.glob(f"herd-{job_id}.out"))


def test_every_slurm_stop_is_a_checkpoint_and_the_same_sbatch_line_resumes(model, tmp_path, slurm):
    d = tmp_path / "run"
    slurm = dict(slurm, HERD_BIN=str(BIN / "herd"), MASTER_PORT=str(master_port()), OMP_NUM_THREADS="1")
    # A long heartbeat timeout: the ranks are stopped (SIGSTOP) for up to 30 s in the time-limit case.
    job(d, model, steps=LONG, distributed=", heartbeat_timeout_s: 120")
    for name, (scancel, sbatch_args) in STOPS.items():
        record, log = stop_while_training(d, slurm, scancel, sbatch_args)
        # Every rank stopped at a committed checkpoint (exit 130; a rank that was killed is 137 or
        # "Killed"), and the stop message says how this launch mode resumes.
        assert task_exits(log) == {0: 130, 1: 130} and "Killed" not in log, f"{name}: {record}\n{log}"
        assert record["ExitCode"] == "130:0", f"{name}: {record}"
        stopped = events(d, "interrupted")[-1]
        assert stopped["checkpoint"] == stopped["step"] < LONG, name
        assert (d / "trainer" / f"checkpoint-{stopped['step']}" / "checkpoint.json").exists(), name
        assert "to resume: submit the same sbatch line again" in log, log
        print(f"{name}: stopped after step {stopped['step']}, {record.get('JobState')} "
              f"ExitCode={record.get('ExitCode')}")
    assert len(events(d, "interrupted")) == len(STOPS)
    # The same sbatch line again: it resumes and ends as the uninterrupted run.
    out = subprocess.run(["sbatch", "--parsable", "--wait", "--nodes=1", "--ntasks=2", f"--chdir={d}",
                          str(SRC / "deploy" / "slurm" / "herd.sbatch"), str(d / "c.yaml")],
                         capture_output=True, text=True, timeout=300, env=slurm)
    assert out.returncode == 0, out.stderr + "".join(p.read_text() for p in d.glob("herd-*.out"))
    ref = tmp_path / "reference"
    run = subprocess.run([str(BIN / "herd"), "train", str(job(ref, model, steps=LONG)), "--workers", "2"],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr
    assert_trains_as(d, losses(ref), adapter(ref), steps=LONG, adapter_atol=1e-4)
