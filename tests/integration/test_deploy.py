"""The deploy kit's launch lines run as written: deploy/mpi/herd-mpirun (the line docs/deploy.md
gives) with 2 ranks on this host trains what `herd train --workers 2` trains."""
import os
import re
import subprocess
from pathlib import Path

import pytest

from runs import adapter, losses

BIN = Path(os.environ["HERD_BIN"])
SRC = Path(os.environ["HERD_SOURCE_DIR"])


def config(d, model):
    path = d / "c.yaml"
    path.write_text(f"""model_name: t
base_model: {model}
model_context_window: 128
data: {{type: vicuna, dataset: {SRC / 'data' / 'sample-vicuna.json'}}}
lora: {{r: 8, lora_alpha: 16, target_modules: all-linear, lora_dropout: 0.0, bias: none, task_type: CAUSAL_LM}}
trainer: {{device: cpu, batch_size: 2, gradient_accumulation_steps: 2, warmup_steps: 3, num_train_epochs: 1,
          max_steps: 8, learning_rate: 0.01, logging_steps: 1, seed: 7}}
trainer_output_dir: {d}/trainer
model_output_dir: {d}/models
quantization: {{enabled: true, compute_dtype: float32}}
distributed: {{world_size: 2}}
metrics: {{enabled: false}}
""")
    return path


def documented(section, program):
    """The command of docs/deploy.md's SECTION that runs PROGRAM."""
    text = (SRC / "docs" / "deploy.md").read_text()
    body = text[text.index(f"## {section}"):]
    blocks = re.findall(r"^```\n(.*?)^```", body, re.M | re.S)
    return next(line for b in blocks for line in b.splitlines() if program in line)


def test_the_mpirun_line_trains_as_herd_train_workers_2(model, tmp_path):
    line = documented("mpirun", "deploy/mpi/herd-mpirun")
    assert re.fullmatch(r"HERD_BIN=build/bin/herd deploy/mpi/herd-mpirun hostfile \d+ job.yaml", line), line
    ref = tmp_path / "ref"
    ref.mkdir()
    out = subprocess.run([str(BIN / "herd"), "train", str(config(ref, model)), "--workers", "2"], capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr

    run = tmp_path / "mpi"
    run.mkdir()
    (run / "hostfile").write_text("localhost slots=2\n")
    # As docs/deploy.md runs it, on 2 ranks of this host: MPI over loopback, root allowed in a container.
    out = subprocess.run([str(SRC / "deploy" / "mpi" / "herd-mpirun"), str(run / "hostfile"), "2",
                          str(config(run, model))], capture_output=True, text=True, timeout=300, cwd=SRC,
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
