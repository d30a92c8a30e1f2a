"""Several workers train one job: the same answer at 1, 2 and 4 ranks (same global batch), under
`herd train --workers N`, `mpirun -np 2` and herd-coordinator + separate `herd worker` processes,
and a worker killed with SIGKILL and replaced mid-run."""
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from cluster import BIN, TOKEN, Coordinator, herd, logs, sample_log, wait_for_recorded_step
from runs import adapter, config, events, free_port, free_ports, losses

HELD = re.compile(r"^rank (\d+) of (\d+) \(attempt (\d+)\): base weights held (\d+) of (\d+) bytes; resident \d+ MiB$", re.M)
# Sums over ranks happen in another order than one rank's accumulation: fp32 rounding.
LOSS_RTOL, ADAPTER_ATOL = 1e-5, 2e-5


def assert_same(run, reference):
    (loss, weights), (ref_loss, ref_weights) = run, reference
    assert sorted(loss) == sorted(ref_loss)
    for step in ref_loss:
        assert loss[step] == pytest.approx(ref_loss[step], rel=LOSS_RTOL), step
    assert weights.keys() == ref_weights.keys()
    for k in ref_weights:
        assert (weights[k] - ref_weights[k]).abs().max().item() <= ADAPTER_ATOL, k


@pytest.fixture(scope="module")
def one_rank(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("one")
    out = herd("train", config(d / "c.yaml", model, d, accumulation=4))
    assert out.returncode == 0, out.stderr
    return losses(d), adapter(d)


@pytest.mark.parametrize("workers,sharding", [(2, "full_shard"), (4, "full_shard"), (2, "no_shard")])
def test_local_workers_equal_one_rank(model, tmp_path, one_rank, workers, sharding):
    c = config(tmp_path / "c.yaml", model, tmp_path, accumulation=4 // workers,
               extra=f"distributed: {{sharding: {sharding}}}\n")
    out = herd("train", c, "--workers", workers)
    assert out.returncode == 0, out.stdout + out.stderr
    assert_same((losses(tmp_path), adapter(tmp_path)), one_rank)
    assert {r["world_size"] for r in events(tmp_path)} == {workers}
    held = {int(m.group(1)): (int(m.group(4)), int(m.group(5))) for m in HELD.finditer(out.stdout)}
    assert sorted(held) == list(range(workers))
    for mine, whole in held.values():
        if sharding == "full_shard":  # 1/N of the frozen bytes, and the tensors' 64-byte alignment
            assert whole <= mine * workers <= whole * 1.01, (mine, whole)
        else:
            assert mine == whole


# A ratio of 2: at 8 (magnitudes at lr 0.08) the run is chaotic enough that the ranks' other
# order of sums grew to 1.8e-5 relative by step 12 (1e-7 at 2, as without LoRA+).
DORA_LORAPLUS = ", use_dora: true, loraplus_lr_ratio: 2"


@pytest.fixture(scope="module")
def one_rank_dora(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("one-dora")
    out = herd("train", config(d / "c.yaml", model, d, accumulation=4, lora_extra=DORA_LORAPLUS))
    assert out.returncode == 0, out.stderr
    return losses(d), adapter(d)


@pytest.mark.parametrize("workers", [2, 4])
def test_dora_with_loraplus_at_2_and_4_workers_equals_one_rank(model, tmp_path, one_rank_dora, workers):
    """The magnitudes are replicated like A and B and their gradients summed alike."""
    c = config(tmp_path / "c.yaml", model, tmp_path, accumulation=4 // workers, lora_extra=DORA_LORAPLUS)
    out = herd("train", c, "--workers", workers)
    assert out.returncode == 0, out.stdout + out.stderr
    assert_same((losses(tmp_path), adapter(tmp_path)), one_rank_dora)
    magnitudes = [k for k in one_rank_dora[1] if k.endswith(".lora_magnitude_vector")]
    assert len(magnitudes) == 2 * 7


def test_eval_loss_over_ranks_equals_one_rank(model, tmp_path):
    """The held-out split is shared out over the ranks and its loss summed: the same figure."""
    evals = {}
    for workers in (1, 2):
        c = config(tmp_path / f"e{workers}.yaml", model, tmp_path / f"e{workers}", accumulation=4 // workers)
        c.write_text(c.read_text().replace("sample-vicuna.json}", "sample-vicuna.json, eval_fraction: 0.1}")
                     .replace("logging_steps: 1,", "logging_steps: 1, eval_steps: 4,"))
        out = herd("train", c, *(["--workers", workers] if workers > 1 else []))
        assert out.returncode == 0, out.stdout + out.stderr
        assert {r["samples"] for r in events(tmp_path / f"e{workers}", "eval")} == {24}
        evals[workers] = {r["step"]: r["eval_loss"] for r in events(tmp_path / f"e{workers}", "eval")}
    assert sorted(evals[1]) == [4, 8, 12]
    assert evals[2].keys() == evals[1].keys()
    for step, loss in evals[1].items():
        assert evals[2][step] == pytest.approx(loss, rel=LOSS_RTOL)


def test_packed_rows_train_every_sample_once_alike_at_1_2_and_4_workers(model, tmp_path):
    """data.packing: one epoch in rows of several conversations; each sample is trained once, and
    1, 2 and 4 workers (the same global batch of rows) give the same losses and adapter."""
    runs = {}
    for workers in (1, 2, 4):
        d = tmp_path / f"w{workers}"
        c = config(d.with_suffix(".yaml"), model, d, accumulation=4 // workers, steps=0)
        c.write_text(c.read_text().replace("sample-vicuna.json}", "sample-vicuna.json, packing: true}")
                     .replace("model_context_window: 128", "model_context_window: 512"))  # none truncated
        out = herd("train", c, *(["--workers", workers] if workers > 1 else []))
        assert out.returncode == 0, out.stdout + out.stderr
        lineage = sample_log(c)
        assert sorted(s for ids in lineage.values() for s in ids) == list(range(240))
        rows = int(re.search(r"^herd: packing: 240 samples in (\d+) rows of 512 tokens, [\d.]+% full$", out.stdout,
                             re.M).group(1))
        assert len(lineage) == -(-rows // 8) < 240 / 8  # 8 rows a step: fewer steps than 8 samples a step take
        runs[workers] = losses(d), adapter(d)
    for workers in (2, 4):
        assert_same(runs[workers], runs[1])


def test_mpirun_two_ranks_equal_one_rank(model, tmp_path, one_rank):
    c = config(tmp_path / "c.yaml", model, tmp_path, accumulation=2)
    out = subprocess.run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", "-x", "OMP_NUM_THREADS=1",
                          str(BIN / "herd"), "worker", str(c)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "launched by openmpi (rank 0 of 2)" in out.stdout and "(hosted here)" in out.stdout
    assert_same((losses(tmp_path), adapter(tmp_path)), one_rank)


def test_torchrun_environment_two_ranks_equal_one_rank(model, tmp_path, one_rank):
    c = config(tmp_path / "c.yaml", model, tmp_path, accumulation=2)
    port = free_port()
    procs = [subprocess.Popen([str(BIN / "herd"), "worker", str(c)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=dict(os.environ, RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r),
                                                  MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                                                  HERD_JOB_TOKEN=TOKEN, OMP_NUM_THREADS="1"))
             for r in (1, 0)]  # rank 1 first: it waits for rank 0's coordinator
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert f"launched by torchrun (rank 0 of 2); coordinator 127.0.0.1:{port} (hosted here)" in logs[1]
    assert_same((losses(tmp_path), adapter(tmp_path)), one_rank)


def test_coordinator_launched_workers_equal_one_rank(model, tmp_path, one_rank):
    c = config(tmp_path / "c.yaml", model, tmp_path, accumulation=2, extra="distributed: {world_size: 2}\n")
    coord = Coordinator(c, tmp_path / "state")
    try:
        workers = [coord.worker(tmp_path / f"w{i}.log", with_config=i == 0) for i in range(2)]
        for w in workers:
            assert w.wait(timeout=300) == 0
        code, out = coord.ended()
        assert code == 0 and "herd-coordinator: the job is DONE; every live worker knows; exiting 0" in out, out
    finally:
        coord.stop()
    assert_same((losses(tmp_path), adapter(tmp_path)), one_rank)


def test_indexed_workers_of_one_host_given_one_metrics_port_all_train(model, tmp_path):
    """Three workers of one host as a Kubernetes Indexed Job's pods on the host network (an index
    each, no local rank) share metrics.worker_port: one serves it, the others the next free ports,
    and the job ends DONE."""
    port, coordinator_port = free_ports(3), free_port()
    c = config(tmp_path / "c.yaml", model, tmp_path, accumulation=1, steps=4, extra="distributed: {world_size: 3}\n")
    c.write_text(c.read_text().replace("metrics: {enabled: false}",
                                       f"metrics: {{enabled: true, port: {coordinator_port}, worker_port: {port}, "
                                       f"tensorboard: false}}"))
    coord = Coordinator(c, tmp_path / "state")
    try:
        workers = [coord.worker(tmp_path / f"w{i}.log", env={"JOB_COMPLETION_INDEX": str(i)}) for i in range(3)]
        assert [w.wait(timeout=300) for w in workers] == [0, 0, 0], logs(tmp_path, "w0", "w1", "w2")
        code, out = coord.ended()
        assert code == 0 and "the job is DONE; every live worker knows; exiting 0" in out, out
    finally:
        coord.stop()
    served = [re.findall(r"^worker metrics on http://0\.0\.0\.0:(\d+)/metrics( \(\d+ is in use\))?$",
                         logs(tmp_path, f"w{i}"), re.M) for i in range(3)]
    assert all(len(s) == 1 for s in served), served
    ports = sorted(int(s[0][0]) for s in served)
    assert ports[0] == port and len(set(ports)) == 3 and ports[-1] < port + 64, ports
    assert sorted(bool(s[0][1]) for s in served) == [False, True, True], served
    gangs = sorted(m[:2] for i in range(3) for m in HELD.findall(logs(tmp_path, f"w{i}")))
    assert gangs == [("0", "3"), ("1", "3"), ("2", "3")], gangs


def test_a_worker_that_cannot_load_the_model_leaves_at_once_and_exits_1(model, tmp_path):
    """A worker whose base model is damaged (its set-up fails after it was given a rank) tells the
    coordinator it leaves: the job is RECOVERING within seconds, not at the heartbeat timeout (60 s),
    and a replacement finishes it."""
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    c = config(tmp_path / "c.yaml", model, tmp_path, accumulation=2, steps=4,
               extra="distributed: {world_size: 2, heartbeat_timeout_s: 60}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(c.read_text().replace(f"base_model: {model}", f"base_model: {broken}"))
    coord = Coordinator(c, tmp_path / "state")
    try:
        good = coord.worker(tmp_path / "good.log")
        failing = coord.worker(tmp_path / "bad.log", config=bad)
        assert failing.wait(timeout=120) == 1, logs(tmp_path, "bad")
        exited = time.time()
        while (status := coord.status()).get("state") != "RECOVERING":
            assert time.time() - exited < 30, status
            time.sleep(0.05)
        assert "left: " in status["message"] and "model.safetensors" in status["message"], status
        replacement = coord.worker(tmp_path / "replacement.log")
        assert [good.wait(timeout=300), replacement.wait(timeout=300)] == [0, 0], logs(tmp_path, "good", "replacement")
        code, out = coord.ended()
        assert code == 0, out
    finally:
        coord.stop()


def test_a_cancelled_job_fails_its_workers_and_its_coordinator(model, tmp_path):
    """Exit statuses a batch system reads: `herd cancel` mid-run makes both workers and the
    herd-coordinator exit 1 (a Job's failure policy applies); DONE is 0 (the test above)."""
    c = config(tmp_path / "c.yaml", model, tmp_path, accumulation=2, steps=200, extra="distributed: {world_size: 2}\n")
    coord = Coordinator(c, tmp_path / "state")
    try:
        workers = [coord.worker(tmp_path / f"w{i}.log") for i in range(2)]
        wait_for_recorded_step(2, tmp_path, workers)
        out = herd("cancel", "--coordinator", coord.address, "--reason", "test", env=dict(os.environ, HERD_JOB_TOKEN=TOKEN))
        assert out.returncode == 0, out.stderr
        assert [w.wait(timeout=60) for w in workers] == [1, 1], logs(tmp_path, "w0", "w1")
        code, text = coord.ended()
        assert code == 1 and "herd-coordinator: the job is FAILED; every live worker knows; exiting 1" in text, text
    finally:
        coord.stop()


EPOCH = 30  # steps: one epoch of the 240 sample conversations, 8 a step: every sample exactly once


@pytest.fixture(scope="module")
def epoch_reference(model, tmp_path_factory):
    """One rank's loss at the end of that epoch, uninterrupted."""
    d = tmp_path_factory.mktemp("epoch")
    out = herd("train", config(d / "r.yaml", model, d, accumulation=4, steps=EPOCH))
    assert out.returncode == 0, out.stderr
    return losses(d)[EPOCH]


def disrupted_run(model, tmp_path, distributed, at_step, disrupt):
    """Two workers of a herd-coordinator train the epoch; when step `at_step` is logged,
    disrupt(coordinator, a, b) does its harm and answers the workers to wait for. The job must
    end DONE after at least one recovery. Answers the coordinator."""
    c = config(tmp_path / "c.yaml", model, tmp_path, accumulation=2, steps=EPOCH,
               extra=f"distributed: {{world_size: 2, {distributed}}}\ncheckpoint: {{every_steps: 4}}\n")
    coord = Coordinator(c, tmp_path / "state")
    try:
        a, b = coord.worker(tmp_path / "a.log"), coord.worker(tmp_path / "b.log")
        wait_for_recorded_step(at_step, tmp_path, [a, b])
        for w in disrupt(coord, a, b):
            assert w.wait(timeout=300) == 0, "".join(f.read_text() for f in tmp_path.glob("*.log"))
        code, out = coord.ended()
        assert code == 0 and "the job is DONE; every live worker knows; exiting 0" in out, out
        assert int(re.findall(r"^herd-coordinator: DONE attempt (\d+)", out, re.M)[-1]) >= 2, out
    finally:
        coord.stop()
    return coord



def test_a_worker_killed_and_replaced_loses_and_repeats_no_sample(model, tmp_path, epoch_reference):
    def kill_and_replace(coord, a, b):
        b.send_signal(signal.SIGKILL)
        b.wait()
        return [a, coord.worker(tmp_path / "c.log")]

    coord = disrupted_run(model, tmp_path, "heartbeat_timeout_s: 5", 6, kill_and_replace)
    text = logs(tmp_path, "a", "c")
    assert "resuming from" in text
    lineage = coord.samples()
    assert sorted(lineage) == list(range(1, EPOCH + 1))
    trained = sorted(s for ids in lineage.values() for s in ids)
    assert trained == list(range(240))
    final = max(losses(tmp_path).items())
    assert final[0] == EPOCH
    assert final[1] == pytest.approx(epoch_reference, rel=1e-3)


def test_a_stopped_worker_is_a_timeout_and_a_new_attempt_not_a_hang(model, tmp_path, epoch_reference):
    """A worker frozen (SIGSTOP) past the collective timeout, while its heartbeat deadline is far
    off: its peer's collective times out, it reports the failure, the coordinator starts a new
    attempt, and once the worker continues (SIGCONT) both rejoin and finish."""
    def freeze(coord, a, b):
        b.send_signal(signal.SIGSTOP)
        time.sleep(5)
        b.send_signal(signal.SIGCONT)
        return [a, b]

    coord = disrupted_run(model, tmp_path, "collective_timeout_s: 2, heartbeat_timeout_s: 60", 6, freeze)
    text = logs(tmp_path, "a", "b")
    assert re.search(r"attempt 1: \w+ on rank \d of 2 \(attempt 1\) failed: .*; waiting for the next gang", text), text
    assert sorted(s for ids in coord.samples().values() for s in ids) == list(range(240))
    assert losses(tmp_path)[EPOCH] == pytest.approx(epoch_reference, rel=1e-3)


def test_a_coordinator_killed_and_restarted_is_rejoined(model, tmp_path, epoch_reference):
    """herd-coordinator dies (SIGKILL) mid-run and comes back on the same port: the workers
    register again and the job resumes from its journal's last checkpoint."""
    def restart(coord, a, b):
        coord.kill()
        coord.start(coord.address)
        return [a, b]

    coord = disrupted_run(model, tmp_path, "heartbeat_timeout_s: 30", 10, restart)
    text = logs(tmp_path, "a", "b")
    assert "resuming from" in text
    assert sorted(s for ids in coord.samples().values() for s in ids) == list(range(240))
    assert losses(tmp_path)[EPOCH] == pytest.approx(epoch_reference, rel=1e-3)


def test_local_workers_resume_from_a_checkpoint(model, tmp_path, one_rank):
    c = config(tmp_path / "c.yaml", model, tmp_path, accumulation=2, extra="checkpoint: {every_steps: 4}\n")
    first = herd("train", c, "--workers", 2)
    assert first.returncode == 0, first.stderr
    assert_same((losses(tmp_path), adapter(tmp_path)), one_rank)
    shutil.rmtree(tmp_path / "trainer" / "checkpoint-12")
    again = herd("train", c, "--workers", 2, "--resume")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"warning: skipping {tmp_path / 'trainer' / 'checkpoint-12'}: checkpoint.json is missing" in again.stderr
    assert "resuming from" in again.stdout and "checkpoint-8 (step 8)" in again.stdout
    records = events(tmp_path)
    assert [r["step"] for r in records] == list(range(1, 13))
    assert [r["attempt"] for r in records if r["step"] > 8] == [2] * 4  # steps 9-12 trained again
    assert_same((losses(tmp_path), adapter(tmp_path)), one_rank)
