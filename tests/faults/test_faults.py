"""The fault harness: a herd-coordinator and CPU workers train the sample conversations (one epoch:
30 steps of 8, 240 samples), and at a seeded random step one fault strikes. Afterwards the job
either ends DONE with the journal's lineage holding every sample of every epoch exactly once and
the last step's loss within LOSS_RTOL of an uninterrupted run, or it stops where docs/reliability.md
says it should, with a clear message and nothing half-written where a later run would read it;
then the harness does what an operator would (frees the disk, restarts) and the job must finish as
above. A mixed run puts several faults into one two-epoch job of four workers.

Each test appends what it measured to the JSON-lines file $HERD_FAULT_REPORT when that is set:
    HERD_FAULT_REPORT=/tmp/faults.jsonl ctest --test-dir build -R faults
$HERD_FAULT_SEED (default 1) seeds the steps the faults strike at."""
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cluster import Coordinator, logs
from runs import config, losses

EPOCH = 30           # steps; 240 samples, 8 a step
CHECKPOINT_EVERY = 4
LOSS_RTOL = 1e-5     # the last step's loss against one uninterrupted rank: fp32 sums in another order
SEED = int(os.environ.get("HERD_FAULT_SEED", "1"))


def fault_step(kind, low=5, high=20):
    return random.Random(f"{SEED}-{kind}").randint(low, high)


def report(fault, outcome, checked, **measured):
    row = {"fault": fault, "outcome": outcome, "checked": checked, "seed": SEED, **measured}
    print(json.dumps(row))
    if os.environ.get("HERD_FAULT_REPORT"):
        with open(os.environ["HERD_FAULT_REPORT"], "a") as f:
            f.write(json.dumps(row) + "\n")


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    """(steps, workers, accumulation) -> the losses of that many workers (one rank at accumulation 4
    unless told) training that many steps uninterrupted (the schedule depends on the length)."""
    runs = {}

    def of(steps, workers=1, accumulation=4):
        key = (steps, workers, accumulation)
        if key not in runs:
            d = tmp_path_factory.mktemp(f"reference-{steps}-{workers}")
            extra = f"distributed: {{world_size: {workers}}}\n" if workers > 1 else ""
            path = config(d / "r.yaml", model, d, accumulation=accumulation, steps=steps, extra=extra)
            out = subprocess.run([str(Path(os.environ["HERD_BIN"]) / "herd"), "train", str(path),
                                  *(["--workers", str(workers)] if workers > 1 else [])],
                                 capture_output=True, text=True, timeout=600)
            assert out.returncode == 0, out.stderr
            runs[key] = losses(d)
        return runs[key]

    return of


class Job:
    """A job of `workers` herd workers and a herd-coordinator in tmp; its trainer output in
    `trainer` and coordinator state in `state` (a size-limited mount, for the disk-full faults)."""

    def __init__(self, model, tmp, distributed="heartbeat_timeout_s: 3", workers=2, steps=EPOCH, trainer=None,
                 state=None, start=True, accumulation=None):
        self.tmp, self.steps = tmp, steps
        self.trainer = trainer or tmp / "trainer"
        accumulation = accumulation or 4 // workers
        # The uninterrupted run it is compared with: one rank at global batch 8 (2 x 4), else its own shape.
        self.shape = (1, 4) if workers * accumulation == 4 else (workers, accumulation)
        self.epoch = 240 // (2 * accumulation * workers)  # steps
        self.config = config(tmp / "c.yaml", model, tmp, accumulation=accumulation, steps=steps,
                             extra=f"distributed: {{world_size: {workers}, {distributed}}}\n"
                                   f"checkpoint: {{every_steps: {CHECKPOINT_EVERY}, keep_last: 3}}\n")
        if trainer:
            self.config.write_text(self.config.read_text().replace(f"trainer_output_dir: {tmp}/trainer",
                                                                   f"trainer_output_dir: {trainer}"))
        self.coord = Coordinator(self.config, state or tmp / "state")
        self.procs = {}
        for i in range(workers if start else 0):
            self.start(f"w{i}")

    def start(self, name, **kwargs):
        self.procs[name] = self.coord.worker(self.tmp / f"{name}.log", **kwargs)
        return self.procs[name]

    def events(self, event="step"):
        path = self.trainer / "events.jsonl"
        out = []
        for line in path.read_text().splitlines() if path.exists() else []:
            try:  # a line being written (or cut short by a full disk) is not read yet
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r["event"] == event:
                out.append(r)
        return out

    def wait_for_attempt(self, reason, after=0, timeout=120):
        """The events file's first record of an attempt after `after` formed for `reason`, once it
        has trained a step."""
        deadline = time.time() + timeout
        while True:
            formed = [a for a in self.events("attempt") if a["reason"] == reason and a["attempt"] > after]
            if formed and any(r["attempt"] == formed[0]["attempt"] for r in self.events()):
                return formed[0]
            assert time.time() < deadline, self.all_logs()
            time.sleep(0.05)

    def wait_for_status(self, ok, timeout=120):
        """Polls `herd status --json` until ok(status); answers when that came true: after the start of
        the last call that found it false (or the wait's), before the end of the first that found it true."""
        last_false = time.time()
        deadline = last_false + timeout
        while True:
            asked = time.time()
            if ok(self.coord.status()):
                return last_false, time.time()
            last_false = asked
            assert time.time() < deadline, self.all_logs()
            time.sleep(0.05)

    def wait_for_step(self, step, timeout=120):
        deadline = time.time() + timeout
        while max((r["step"] for r in self.events()), default=0) < step:
            assert time.time() < deadline, self.all_logs()
            assert all(p.poll() is None for p in self.procs.values()), self.all_logs()
            time.sleep(0.01)
        self.fault_at = time.time()
        self.fault_attempt = max(r["attempt"] for r in self.events())

    def checkpoint_committed(self, at_least, timeout=120):
        """Until the coordinator has committed a checkpoint of step >= at_least."""
        deadline = time.time() + timeout
        while int(self.coord.status().get("checkpoint_step", 0)) < at_least:
            assert time.time() < deadline, self.all_logs()
            time.sleep(0.05)

    def all_logs(self):
        return "".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(self.tmp.glob("*.log")))

    def recovered_after(self):
        """Seconds from the fault to the first step a later attempt trained."""
        later = [r["time"] for r in self.events() if r["attempt"] > self.fault_attempt]
        return round(min(later) - self.fault_at, 2) if later else None

    def finish(self, names=None, code=0):
        """Every named worker (default: every live one) exits `code`; the coordinator ends DONE."""
        names = names or [n for n, p in self.procs.items() if p.poll() is None]
        for n in names:
            assert self.procs[n].wait(timeout=300) == code, self.all_logs()
        got, out = self.coord.ended()
        self.coord_out = out
        assert got == 0 and "the job is DONE; every live worker knows; exiting 0" in out, out + self.all_logs()

    def check_exactly_once(self, reference):
        """Every sample of every epoch once in the journal's lineage; the last loss of each epoch
        within LOSS_RTOL of one uninterrupted rank. Answers the largest relative difference."""
        lineage = self.coord.samples()
        assert sorted(lineage) == list(range(1, self.steps + 1))
        for epoch in range(self.steps // self.epoch):
            trained = sorted(s for step, ids in lineage.items() if (step - 1) // self.epoch == epoch for s in ids)
            assert trained == list(range(240)), f"epoch {epoch}"
        got = {r["step"]: r["loss"] for r in self.events()}
        reference = reference(self.steps, *self.shape)
        worst = 0.0
        for step in range(self.epoch, self.steps + 1, self.epoch):
            assert got[step] == pytest.approx(reference[step], rel=LOSS_RTOL), step
            worst = max(worst, abs(got[step] / reference[step] - 1))
        return worst

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        self.coord.stop()


@pytest.fixture
def job_of(model, tmp_path):
    jobs = []

    def make(**kwargs):
        jobs.append(Job(model, tmp_path, **kwargs))
        return jobs[-1]

    yield make
    for j in jobs:
        j.stop()


def test_worker_sigkill_and_replacement(job_of, reference):
    job = job_of()
    job.wait_for_step(fault_step("worker-sigkill"))
    job.procs["w1"].kill()
    job.procs["w1"].wait()
    job.start("w2")
    job.finish(["w0", "w2"])
    report("worker SIGKILL, a replacement started at once", "DONE, attempt 2", "lineage exactly once; loss",
           recover_s=job.recovered_after(), rel_diff=job.check_exactly_once(reference))


# Three workers that may go on as two (global batch 12: 2 x 2 x 3, or 2 x 3 x 2; 20 steps an epoch),
# for three epochs: the spare's wait and the stop fit well before the end.
REGROW = ("heartbeat_timeout_s: 3, collective_timeout_s: 3, min_workers: 2, replacement_timeout_s: 2, "
          "regrow_after_s: 1")


def test_a_shrunk_gang_regrows_when_a_replacement_returns(job_of, reference):
    """A worker SIGKILLed and not replaced within replacement_timeout_s: the other two train on at
    accumulation 3. A replacement started later registers as a spare; after regrow_after_s the gang
    stops at the checkpoint of a step no rank was streamed yet and is three again from it."""
    job = job_of(workers=3, accumulation=2, steps=60, distributed=REGROW)
    job.wait_for_step(fault_step("regrow", 3, 8))
    job.procs["w2"].kill()
    job.procs["w2"].wait()
    shrunk = job.wait_for_attempt("shrink")
    assert (shrunk["world_size"], shrunk["accumulation"]) == (2, 3)
    started = time.time()
    job.start("w3")
    # A spare, or already in the regrown gang (a slow poll): either way it has registered.
    registered = job.wait_for_status(lambda s: s.get("spares") == 1 or s.get("gang_size") == 3)
    regrown = job.wait_for_attempt("regrow", after=shrunk["attempt"])
    assert (regrown["world_size"], regrown["accumulation"]) == (3, 2), regrown
    assert regrown["step"] > shrunk["step"]  # from the checkpoint the shrunk gang stopped at
    first_step = min(r["time"] for r in job.events() if r["attempt"] == regrown["attempt"])
    job.finish()
    report("worker SIGKILL, no replacement within replacement_timeout_s (2 s), one started later",
           "DONE; the gang shrinks to 2, then regrows to 3 at a checkpoint", "lineage exactly once; loss",
           recover_s=job.recovered_after(), start_to_first_step_s=round(first_step - started, 2),
           registered_to_first_step_s=[round(first_step - t, 2) for t in reversed(registered)],
           regrow_after_s=1, rel_diff=job.check_exactly_once(reference))


def test_a_second_failure_and_a_returning_worker_during_the_stop_for_regrow(job_of, reference):
    """As above, but a rank of the shrunk gang is frozen as the spare starts, so the gang never reaches
    the checkpoint it is asked to stop at; a worker started while the coordinator waits for that
    checkpoint, and the frozen rank declared dead at its heartbeat timeout: the next gang is the live
    three, from the last checkpoint, and the frozen worker, continued, is a spare until the end."""
    job = job_of(workers=3, accumulation=2, steps=60,
                 distributed=REGROW.replace("heartbeat_timeout_s: 3, collective_timeout_s: 3",
                                            "heartbeat_timeout_s: 6, collective_timeout_s: 10"))
    job.wait_for_step(fault_step("regrow-twice", 3, 8))
    job.procs["w2"].kill()
    job.procs["w2"].wait()
    shrunk = job.wait_for_attempt("shrink")
    job.fault_at, job.fault_attempt = time.time(), shrunk["attempt"]
    job.procs["w0"].send_signal(signal.SIGSTOP)  # a member of the shrunk gang (w2 was killed)
    job.start("w3")
    job.wait_for_status(lambda s: int(s.get("regrow_step", 0)) > 0)
    job.start("w4")
    recovered = job.wait_for_attempt("failure", after=shrunk["attempt"])
    job.procs["w0"].send_signal(signal.SIGCONT)
    assert (recovered["world_size"], recovered["accumulation"]) == (3, 2), recovered
    assert not any(a["reason"] == "regrow" for a in job.events("attempt"))
    job.finish()
    report("during the stop for regrow: a worker returns, and a rank is frozen past its heartbeat timeout",
           "DONE; the next gang is the live three (reason failure), from the last checkpoint",
           "lineage exactly once; loss", recover_s=job.recovered_after(), rel_diff=job.check_exactly_once(reference))


def test_coordinator_sigkill_and_restart(job_of, reference):
    job = job_of(distributed="heartbeat_timeout_s: 30")
    job.wait_for_step(fault_step("coordinator-sigkill"))
    job.coord.kill()
    job.coord.start(job.coord.address)
    job.finish()
    assert "resuming from" in logs(job.tmp, "w0", "w1")
    report("coordinator SIGKILL, restarted on its port", "DONE; workers re-register, resume from the journal",
           "lineage exactly once; loss", recover_s=job.recovered_after(), rel_diff=job.check_exactly_once(reference))


def test_worker_sigstop_past_the_heartbeat_timeout(job_of, reference):
    """Frozen for 6 s against a 2 s heartbeat timeout: declared dead, its peer's collective times
    out; once it continues it finds its attempt over and rejoins."""
    job = job_of(distributed="heartbeat_timeout_s: 2, collective_timeout_s: 3")
    job.wait_for_step(fault_step("worker-sigstop"))
    job.procs["w1"].send_signal(signal.SIGSTOP)
    time.sleep(6)
    job.procs["w1"].send_signal(signal.SIGCONT)
    job.finish()
    assert "missed its heartbeats" in job.coord_out, job.coord_out
    report("worker SIGSTOP 6 s (heartbeat timeout 2 s), then SIGCONT", "DONE; it rejoins a new attempt",
           "lineage exactly once; loss", recover_s=job.recovered_after(),
           after_sigcont_s=round(job.recovered_after() - 6, 2), rel_diff=job.check_exactly_once(reference))


class Proxy:
    """A TCP proxy the test controls between a worker and the coordinator: cut() drops every
    connection through it and refuses new ones until heal()."""

    def __init__(self, upstream):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.cut_off, self.live, self.lock = False, [], threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            client, _ = self.listener.accept()
            if self.cut_off:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.live += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self.pump, args=(a, b), daemon=True).start()

    @staticmethod
    def pump(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        self.cut_off = True
        with self.lock:
            for s in self.live:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.live = []

    def heal(self):
        self.cut_off = False


def test_a_partition_between_a_worker_and_the_coordinator(model, tmp_path, reference):
    """Worker w1 reaches the coordinator only through a proxy, which drops its connections and
    refuses new ones for 8 s (heartbeat timeout 3 s), then lets them through again. A proxy, not
    network namespaces: it needs no privileges and cuts exactly this worker's coordinator link,
    while its Gloo link to w0 stays up; a frozen peer on the Gloo link is the SIGSTOP case."""
    job = Job(model, tmp_path, distributed="heartbeat_timeout_s: 3, collective_timeout_s: 3", start=False)
    try:
        proxy = Proxy(job.coord.address)
        job.start("w0")
        job.start("w1", address=proxy.address)
        job.wait_for_step(fault_step("partition"))
        proxy.cut()
        time.sleep(8)
        proxy.heal()
        job.finish()
        assert "missed its heartbeats" in job.coord_out or "dropped its batch stream" in job.coord_out, job.coord_out
        report("partition: one worker's coordinator link cut 8 s (heartbeat timeout 3 s), then healed",
               "DONE; it rejoins a new attempt", "lineage exactly once; loss", recover_s=job.recovered_after(),
               after_heal_s=round(job.recovered_after() - 8, 2), rel_diff=job.check_exactly_once(reference))
    finally:
        job.stop()


class SmallDisk:
    """A tmpfs of `size` mounted at `path` (root only), and a file that fills it."""

    def __init__(self, path, size):
        path.mkdir(parents=True)
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip()}): the disk-full faults need root")
        self.path = path

    def fill(self):
        with open(self.path / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass

    def free(self):
        (self.path / "filler").unlink()

    def unmount(self):
        subprocess.run(["umount", "-l", str(self.path)], check=False)


def test_disk_full_under_the_journal_stops_the_job_and_a_restart_resumes(model, tmp_path, reference):
    disk = SmallDisk(tmp_path / "state-disk", "1m")
    job = None
    try:
        job = Job(model, tmp_path, state=disk.path / "state")
        job.wait_for_step(fault_step("disk-full-journal"))
        disk.fill()
        stopped = time.time()
        code, out = job.coord.ended()
        stopped = round(time.time() - stopped, 2)
        assert code == 1 and "cannot write the journal, so the job stopped at its last durable record" in out, out
        assert "No space left on device" in out, out
        assert [p.wait(timeout=60) for p in job.procs.values()] == [1, 1], job.all_logs()
        # What an operator does: free the space, start the job again.
        disk.free()
        restarted = time.time()
        job.coord.start("127.0.0.1:0")
        for name in ("w2", "w3"):
            job.start(name)
        job.finish()
        first = min(r["time"] for r in job.events() if r["time"] > restarted)
        report("disk full under the coordinator's journal (a 1 MiB tmpfs filled)",
               "FAILED at the last durable record, coordinator and workers exit 1; a restart with space resumes",
               "exit codes, message; after restart: lineage exactly once; loss", stop_s=stopped,
               restart_to_first_step_s=round(first - restarted, 2), rel_diff=job.check_exactly_once(reference))
    finally:
        if job:
            job.stop()
        disk.unmount()


def test_disk_full_under_checkpoints_stops_the_writer_and_leaves_no_checkpoint_half_written(model, tmp_path,
                                                                                             reference):
    disk = SmallDisk(tmp_path / "trainer-disk", "8m")
    job = None
    try:
        job = Job(model, tmp_path, distributed="heartbeat_timeout_s: 3, collective_timeout_s: 3",
                  trainer=disk.path / "trainer")
        job.wait_for_step(fault_step("disk-full-checkpoint"))
        disk.fill()
        done = [n for n, p in job.procs.items() if p.poll() is None]
        deadline = time.time() + 60
        while all(job.procs[n].poll() is None for n in done):
            assert time.time() < deadline, job.all_logs()
            time.sleep(0.05)
        writer = next(n for n in done if job.procs[n].poll() is not None)
        text = (tmp_path / f"{writer}.log").read_text()
        assert job.procs[writer].returncode == 1 and "write failed: No space left on device" in text, text
        left = sorted(p.name for p in (disk.path / "trainer").iterdir() if p.name.startswith((".checkpoint", "checkpoint")))
        committed = int(job.coord.status()["checkpoint_step"])
        assert all(int(n.split("-")[1]) <= committed for n in left if n.startswith("checkpoint")), left
        assert not [n for n in left if n.startswith(".")], left
        disk.free()
        job.start("w2")
        job.finish([n for n in job.procs if n != writer])
        report("disk full under the checkpoints (an 8 MiB tmpfs filled)",
               "the writing rank exits 1 naming the file; its partial files are removed; the job waits for a "
               "replacement and resumes from the last committed checkpoint",
               "message; no checkpoint newer than the committed one, no temporary left; lineage exactly once; loss",
               recover_s=job.recovered_after(), rel_diff=job.check_exactly_once(reference))
    finally:
        if job:
            job.stop()
        disk.unmount()


def restart_everything(job, harm):
    """Every process SIGKILLed (a lost node), harm() done to the files, everything started again."""
    for p in job.procs.values():
        p.kill()
        p.wait()
    job.coord.kill()
    warning = harm()
    job.coord.start(job.coord.address)
    for i in range(len(job.procs)):
        job.start(f"r{i}")
    job.procs = {n: p for n, p in job.procs.items() if n.startswith("r")}
    return warning


def test_a_corrupted_newest_checkpoint_is_skipped_for_the_one_before(job_of, reference):
    job = job_of()
    job.wait_for_step(fault_step("corrupt-checkpoint", 13, 20))
    job.checkpoint_committed(8)

    def corrupt():
        newest = max(job.trainer.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        f = newest / "adapter_model.safetensors"
        data = bytearray(f.read_bytes())
        data[-10] ^= 0xFF
        f.write_bytes(bytes(data))
        return newest.name

    damaged = restart_everything(job, corrupt)
    job.finish()
    assert f"{damaged}" in job.coord_out and "skipp" in job.coord_out.lower(), job.coord_out
    report("the newest checkpoint corrupted (a byte flipped) while everything was down",
           "DONE; the coordinator warns and resumes from the checkpoint before it",
           "warning names it; lineage exactly once; loss", recover_s=job.recovered_after(),
           rel_diff=job.check_exactly_once(reference))


def test_a_truncated_journal_tail_is_dropped(job_of, reference):
    job = job_of()
    job.wait_for_step(fault_step("truncated-journal"))

    def truncate():
        journal = job.coord.state / "journal.log"
        os.truncate(journal, journal.stat().st_size - 5)

    restart_everything(job, truncate)
    job.finish()
    assert "its last record was torn" in job.coord_out, job.coord_out
    report("the journal's last record cut short (5 bytes) while everything was down",
           "DONE; the torn record is dropped with a warning", "warning; lineage exactly once; loss",
           recover_s=job.recovered_after(), rel_diff=job.check_exactly_once(reference))


def test_a_corrupted_token_cache_is_tokenized_again(job_of, reference):
    job = job_of()
    job.wait_for_step(fault_step("corrupt-token-cache"))

    def corrupt():
        (cache,) = (job.trainer / "data-cache").glob("*.herdtok")
        data = bytearray(cache.read_bytes())
        data[len(data) // 2] ^= 0xFF
        cache.write_bytes(bytes(data))
        return cache

    cache = restart_everything(job, corrupt)
    job.finish()
    assert f"{cache} was not used" in job.coord_out and "tokenized again" in job.coord_out, job.coord_out
    report("the token cache corrupted (a byte flipped) while everything was down",
           "DONE; the coordinator warns and tokenizes again", "warning; lineage exactly once; loss",
           recover_s=job.recovered_after(), rel_diff=job.check_exactly_once(reference))


def test_a_worker_with_another_config_is_refused_and_trains_nothing(job_of, reference, tmp_path):
    job = job_of()
    other = tmp_path / "other.yaml"
    other.write_text(job.config.read_text().replace("lora: {r: 8,", "lora: {r: 16,"))
    job.wait_for_step(fault_step("other-config", 2, 8))
    stray = job.start("stray", config=other)
    assert stray.wait(timeout=60) == 1
    text = (tmp_path / "stray.log").read_text()
    assert "this worker's config is not the job's: lora.r is 16 there, 8 in the job" in text, text
    assert "rank" not in text, text
    del job.procs["stray"]
    job.finish()
    assert max(r["attempt"] for r in job.events()) == 1
    report("a worker started with another config (lora.r 16 against 8)",
           "refused at registration (exit 1, the differing keys named); the job goes on untouched",
           "message; no rank given to it; one attempt; lineage exactly once; loss", recover_s=0,
           rel_diff=job.check_exactly_once(reference))


def test_mixed_faults_in_one_two_epoch_run_of_four_workers(job_of, reference):
    """A worker SIGKILLed and replaced, the coordinator SIGKILLed and restarted, a worker frozen
    past its heartbeat timeout: in a seeded order, each once the job has recovered from the last."""
    job = job_of(distributed="heartbeat_timeout_s: 2, collective_timeout_s: 3", workers=4, steps=2 * EPOCH)

    def kill_worker():
        victim = random.Random(SEED).choice([n for n, p in job.procs.items() if p.poll() is None])
        job.procs[victim].kill()
        job.procs[victim].wait()
        del job.procs[victim]
        job.start(f"n{len(job.procs)}-{victim}")

    def kill_coordinator():
        job.coord.kill()
        job.coord.start(job.coord.address)

    def freeze_worker():
        victim = random.Random(SEED + 1).choice(list(job.procs))
        job.procs[victim].send_signal(signal.SIGSTOP)
        time.sleep(5)
        job.procs[victim].send_signal(signal.SIGCONT)

    faults = [kill_worker, kill_coordinator, freeze_worker]
    random.Random(SEED).shuffle(faults)
    recoveries = []
    step = fault_step("mixed", 4, 10)
    for fault in faults:
        job.wait_for_step(step, timeout=180)
        fault()
        while job.recovered_after() is None:
            assert time.time() - job.fault_at < 180, job.all_logs()
            time.sleep(0.05)
        recoveries.append(job.recovered_after())
        step = max(r["step"] for r in job.events()) + 3
    job.finish()
    report("mixed, 4 workers, 2 epochs: " + ", ".join(f.__name__.replace("_", " ") for f in faults),
           "DONE", "lineage exactly once per epoch; loss at both epochs' ends", recover_s=recoveries,
           rel_diff=job.check_exactly_once(reference))
