"""Soak: a herd-coordinator and 4 CPU `herd worker` processes train a tiny model for a long time
(30 min by default) while a fault strikes every few minutes, in turn: a worker SIGKILLed and
started again, the coordinator SIGKILLed and started again on its port, a worker frozen (SIGSTOP)
past its heartbeat timeout and continued, a worker SIGKILLed and started again only after the
replacement timeout (the gang shrinks to 2, min_workers, and regrows to 4 once the worker is back).
The job is then drained (`herd drain`: it stops at a checkpoint) and checked.

Reported: steps committed, each fault and its time to recover (from the fault to the first step a
later attempt trained), the attempts by reason (events.jsonl: start, failure, shrink, regrow),
every epoch the journal finished holding each of the 240 samples once, and
memory: each process's resident set (VmRSS) sampled every 10 s, at its start (after a 2-minute
warm-up, or its first sample for a shorter life) and end, with the least-squares trend in MiB/hour.
A leak shows as a trend that does not flatten; a restarted process starts a new series. The
JSON report holds every sample (`series`: [seconds, MiB]).

    .venv/bin/python bench/soak.py [--minutes 30] [--fault-every 180] [--workdir build/bench-soak]
        [--json FILE]
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "build" / "bin"
TOKEN = "soak-token"
WORKERS = 4
EPOCH = 30  # steps: 240 samples, 8 a step
REPLACEMENT_TIMEOUT = 10  # seconds


def rss_mib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def trend(series):
    """Least-squares slope of (seconds, MiB), in MiB per hour."""
    if len(series) < 3:
        return None
    n = len(series)
    mt = sum(t for t, _ in series) / n
    mv = sum(v for _, v in series) / n
    var = sum((t - mt) ** 2 for t, _ in series)
    return 3600 * sum((t - mt) * (v - mv) for t, v in series) / var if var else None


class Soak:
    def __init__(self, work, minutes, fault_every):
        self.work, self.minutes, self.fault_every = work, minutes, fault_every
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        model = work / "model"
        subprocess.run([str(BIN / "herd"), "tools", "make-tiny-model", str(model), "--layers", "2", "--hidden", "64",
                        "--heads", "4", "--kv-heads", "2", "--intermediate", "128", "--seed", "0"], check=True,
                       capture_output=True)
        self.config = work / "soak.yaml"
        self.config.write_text(f"""model_name: soak
base_model: {model}
model_context_window: 128
data: {{type: vicuna, dataset: {ROOT / 'data' / 'sample-vicuna.json'}}}
lora: {{r: 8, lora_alpha: 16, target_modules: all-linear, lora_dropout: 0.0, bias: none, task_type: CAUSAL_LM}}
trainer: {{device: cpu, batch_size: 2, gradient_accumulation_steps: 1, warmup_steps: 3, num_train_epochs: 100000,
          max_steps: 10000000, learning_rate: 0.001, logging_steps: 1, seed: 7}}
trainer_output_dir: {work}/trainer
model_output_dir: {work}/models
quantization: {{enabled: true, compute_dtype: float32}}
checkpoint: {{every_steps: 10, keep_last: 2}}
distributed: {{world_size: {WORKERS}, heartbeat_timeout_s: 2, collective_timeout_s: 3, min_workers: 2,
              replacement_timeout_s: {REPLACEMENT_TIMEOUT}, regrow_after_s: 5}}
metrics: {{enabled: false}}
""")
        (work / "token").write_text(TOKEN + "\n")
        self.samples = {}  # process name -> [(t, MiB)]
        self.lives = {}    # slot -> processes started in it
        self.faults = []
        self.start = time.time()
        self.coordinator = None
        self.start_coordinator("127.0.0.1:0")
        self.workers = {}
        for i in range(WORKERS):
            self.start_worker(f"w{i}")

    def start_coordinator(self, listen):
        port = self.work / "port"
        port.unlink(missing_ok=True)
        n = self.lives["coordinator"] = self.lives.get("coordinator", -1) + 1
        self.coordinator = subprocess.Popen(
            [str(BIN / "herd-coordinator"), "--config", str(self.config), "--listen", listen, "--port-file", str(port),
             "--token-file", str(self.work / "token")],
            stdout=open(self.work / f"coordinator-{n}.log", "w"), stderr=subprocess.STDOUT)
        self.coordinator.name = f"coordinator#{n}"
        while not port.exists():
            time.sleep(0.05)
        self.address = f"127.0.0.1:{int(port.read_text())}"

    def start_worker(self, slot):
        n = self.lives[slot] = self.lives.get(slot, -1) + 1
        p = subprocess.Popen([str(BIN / "herd"), "worker", str(self.config), "--coordinator", self.address,
                              "--token-file", str(self.work / "token")],
                             stdout=open(self.work / f"{slot}-{n}.log", "w"), stderr=subprocess.STDOUT,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))
        p.name = f"{slot}#{n}"
        self.workers[slot] = p

    def steps(self, event="step"):
        path = self.work / "trainer" / "events.jsonl"
        out = []
        for line in path.read_text().splitlines() if path.exists() else []:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("event") == event:
                out.append(r)
        return out

    def sample_memory(self):
        now = time.time() - self.start
        for p in [self.coordinator, *self.workers.values()]:
            mib = rss_mib(p.pid)
            if mib is not None and p.poll() is None:
                self.samples.setdefault(p.name, []).append((now, mib))

    def fault(self, kind):
        attempt = max((r["attempt"] for r in self.steps()), default=0)
        at = time.time()
        if kind.startswith("worker SIGKILL"):
            late = kind.endswith("later")  # past the heartbeat and replacement timeouts: the gang shrinks first
            slot = "w3" if late else "w1"
            victim = self.workers[slot]
            victim.kill()
            victim.wait()
            if late:
                time.sleep(2 + REPLACEMENT_TIMEOUT + 3)
            self.start_worker(slot)
        elif kind == "coordinator SIGKILL, restarted":
            self.coordinator.kill()
            self.coordinator.wait()
            self.start_coordinator(self.address)
        else:
            victim = self.workers["w2"]
            victim.send_signal(signal.SIGSTOP)
            time.sleep(6)
            victim.send_signal(signal.SIGCONT)
        self.faults.append({"kind": kind, "at_s": round(at - self.start, 1), "attempt_before": attempt,
                            "at": at, "recover_s": None})

    def recoveries(self):
        steps = self.steps()
        for f in self.faults:
            if f["recover_s"] is None:
                later = [r["time"] for r in steps if r["attempt"] > f["attempt_before"] and r["time"] >= f["at"]]
                if later:
                    f["recover_s"] = round(min(later) - f["at"], 2)

    def run(self):
        kinds = ["worker SIGKILL, restarted", "coordinator SIGKILL, restarted", "worker SIGSTOP 6 s, SIGCONT",
                 "worker SIGKILL, restarted 15 s later"]
        end = self.start + 60 * self.minutes
        next_fault = self.start + self.fault_every
        next_sample = self.start
        while time.time() < end:
            now = time.time()
            if now >= next_sample:
                self.sample_memory()
                self.recoveries()
                next_sample += 10
            if now >= next_fault:
                self.fault(kinds[len(self.faults) % len(kinds)])
                next_fault += self.fault_every
            for slot, p in self.workers.items():
                if p.poll() is not None:
                    sys.exit(f"{p.name} exited {p.returncode}: see {self.work}/{slot}-*.log")
            if self.coordinator.poll() is not None:
                sys.exit(f"{self.coordinator.name} exited {self.coordinator.returncode}")
            time.sleep(0.5)
        self.recoveries()
        out = subprocess.run([str(BIN / "herd"), "drain", "--coordinator", self.address], capture_output=True,
                             text=True, env=dict(os.environ, HERD_JOB_TOKEN=TOKEN))
        if out.returncode != 0:
            sys.exit(f"herd drain failed: {out.stdout}{out.stderr}")
        codes = {p.name: p.wait(timeout=300) for p in self.workers.values()}
        code = self.coordinator.wait(timeout=120)
        return codes, code

    def report(self, codes, code):
        lineage = subprocess.run([str(BIN / "herd-coordinator"), "--config", str(self.config), "--sample-log"],
                                 capture_output=True, text=True, check=True).stdout
        steps = {int(l.split()[0]): [int(x) for x in l.split()[1:]] for l in lineage.splitlines()}
        last = max(steps, default=0)
        epochs_ok = 0
        for e in range(last // EPOCH):
            trained = sorted(s for step in range(e * EPOCH + 1, (e + 1) * EPOCH + 1) for s in steps.get(step, []))
            if trained != list(range(240)):
                sys.exit(f"epoch {e}: the journal's samples are not each sample once")
            epochs_ok += 1
        memory = {}
        for name, series in self.samples.items():
            warm = [s for s in series if s[0] - series[0][0] >= 120] or series
            memory[name] = {"samples": len(series), "series": [[round(t, 1), round(v, 1)] for t, v in series],
                            "start_mib": round(warm[0][1], 1),
                            "end_mib": round(series[-1][1], 1), "seconds": round(series[-1][0] - series[0][0]),
                            "trend_mib_per_hour": None if trend(warm) is None else round(trend(warm), 2)}
        attempts = {}
        for a in self.steps("attempt"):
            attempts[a["reason"]] = attempts.get(a["reason"], 0) + 1
        return {"minutes": self.minutes, "workers": WORKERS, "steps_committed": last, "epochs_checked": epochs_ok,
                "attempts_by_reason": attempts,
                "faults": [{k: v for k, v in f.items() if k != "at"} for f in self.faults],
                "exit_codes": {"workers": codes, "coordinator": code}, "memory": memory}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--fault-every", type=float, default=180)
    ap.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench-soak")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    soak = Soak(a.workdir, a.minutes, a.fault_every)
    try:
        codes, code = soak.run()
    finally:
        for p in [soak.coordinator, *soak.workers.values()]:
            if p.poll() is None:
                p.kill()
    r = soak.report(codes, code)
    print(f"soak: {r['minutes']:g} min, {WORKERS} workers: {r['steps_committed']} steps committed, "
          f"{r['epochs_checked']} epochs each with every sample once; drained: workers exit "
          f"{sorted(set(codes.values()))}, coordinator {code}")
    for f in r["faults"]:
        print(f"  fault at {f['at_s']:7.1f} s: {f['kind']:<36} recovered in {f['recover_s']} s")
    print("  attempts by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(r["attempts_by_reason"].items())))
    print("  memory (VmRSS, MiB): process, start (after 2 min), end, life, trend")
    for name, m in sorted(r["memory"].items()):
        print(f"  {name:<15} {m['start_mib']:8.1f} {m['end_mib']:8.1f} {m['seconds']:6d} s "
              f"{m['trend_mib_per_hour'] if m['trend_mib_per_hour'] is not None else '-':>8} MiB/h")
    if a.json:
        a.json.write_text(json.dumps(r, indent=1))
    failed = [f for f in r["faults"] if f["recover_s"] is None]
    if failed:
        sys.exit(f"{len(failed)} fault(s) without a recovery: {failed}")


if __name__ == "__main__":
    main()
