"""The deploy kit's launch lines run as written: deploy/mpi/herd-mpirun (the line docs/deploy.md
gives) with 2 ranks on this host trains what `herd train --workers 2` trains."""
import os
import re
import subprocess
from pathlib import Path

import pytest

from runs import adapter, config, losses

BIN = Path(os.environ["HERD_BIN"])
SRC = Path(os.environ["HERD_SOURCE_DIR"])


def documented(section, program):
    """The command of docs/deploy.md's SECTION that runs PROGRAM."""
    text = (SRC / "docs" / "deploy.md").read_text()
    body = text[text.index(f"## {section}"):]
    blocks = re.findall(r"^```\n(.*?)^```", body, re.M | re.S)
    return next(line for b in blocks for line in b.splitlines() if program in line)


def test_the_mpirun_line_trains_as_herd_train_workers_2(model, tmp_path):
    line = documented("mpirun", "deploy/mpi/herd-mpirun")
    assert re.fullmatch(r"HERD_BIN=build/bin/herd deploy/mpi/herd-mpirun hostfile \d+ job.yaml", line), line
    job = lambda d: config(d / "c.yaml", model, d, accumulation=2, steps=8, extra="distributed: {world_size: 2}\n")
    ref = tmp_path / "ref"
    ref.mkdir()
    out = subprocess.run([str(BIN / "herd"), "train", str(job(ref)), "--workers", "2"], capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr

    run = tmp_path / "mpi"
    run.mkdir()
    (run / "hostfile").write_text("localhost slots=2\n")
    # As docs/deploy.md runs it, on 2 ranks of this host: MPI over loopback, root allowed in a container.
    out = subprocess.run([str(SRC / "deploy" / "mpi" / "herd-mpirun"), str(run / "hostfile"), "2",
                          str(job(run))], capture_output=True, text=True, timeout=300, cwd=SRC,
                         env=dict(os.environ, HERD_BIN=str(BIN / "herd"), HERD_MPI_IFACE="lo",
                                  HERD_MPIRUN_ARGS="--allow-run-as-root", OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "launched by openmpi (rank 0 of 2)" in out.stdout, out.stdout
    assert "Warning" not in out.stderr, out.stderr  # every -x names a variable that is set
    want, got = losses(ref), losses(run)
    assert sorted(got) == list(range(1, 9))
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-5), step
    a, b = adapter(ref), adapter(run)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max().item() <= 2e-5, k
