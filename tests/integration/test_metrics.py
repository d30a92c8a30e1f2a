"""Every process's Prometheus series are docs/metrics.md's catalogue, both ways, and TensorBoard
reads back what events.jsonl holds: `herd train --workers 2` with metrics on (and a configured
peak, so that a CPU run has MFU), scraped while it trains, then stopped with SIGINT."""
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from runs import events

BIN = Path(os.environ["HERD_BIN"])
SRC = Path(os.environ["HERD_SOURCE_DIR"])


def free_ports(n):
    """A port p with p .. p + n - 1 free."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        try:
            socks = []
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("0.0.0.0", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no run of free ports")


def catalogue():
    """docs/metrics.md's tables: {process: {name: type}}."""
    out = {"worker": {}, "coordinator": {}}
    for line in (SRC / "docs" / "metrics.md").read_text().splitlines():
        m = re.match(r"\| `(herd_\w+)` \| (counter|gauge|histogram) \|.*\| (worker|coordinator) \|$", line)
        if m:
            out[m.group(3)][m.group(1)] = m.group(2)
    return out


def served(port):
    """herd's families a /metrics endpoint serves with at least one sample: {name: type} (the
    exporter library's own exposer_* series aside)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    types = dict(re.findall(r"^# TYPE (\w+) (\w+)$", text, re.M))
    sampled = {re.match(r"(\w+?)(_bucket|_sum|_count)?[{ ]", l).group(1) for l in text.splitlines()
               if l and not l.startswith("#")}
    return {n: t for n, t in types.items() if n in sampled and n.startswith("herd_")}, text


def value(text, series):
    m = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def test_catalogue_is_what_every_process_serves_and_tensorboard_reads_the_events(model, tmp_path):
    port, workers = free_ports(1), free_ports(2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""model_name: t
base_model: {model}
model_context_window: 128
data: {{type: vicuna, dataset: {SRC / 'data' / 'sample-vicuna.json'}, eval_fraction: 0.2}}
lora: {{r: 8, lora_alpha: 16, target_modules: all-linear, lora_dropout: 0.0, bias: none, task_type: CAUSAL_LM}}
trainer: {{device: cpu, batch_size: 2, gradient_accumulation_steps: 2, warmup_steps: 3, num_train_epochs: 1,
          max_steps: 400, learning_rate: 0.01, logging_steps: 1, seed: 7, eval_steps: 2}}
trainer_output_dir: {tmp_path}/trainer
model_output_dir: {tmp_path}/models
quantization: {{enabled: true, compute_dtype: float32}}
checkpoint: {{every_steps: 2}}
distributed: {{world_size: 2}}
metrics: {{enabled: true, port: {port}, worker_port: {workers}, peak_tflops: 0.5}}
""")
    run = subprocess.Popen([str(BIN / "herd"), "train", str(cfg), "--workers", "2"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        want = catalogue()
        assert len(want["worker"]) == 19 and len(want["coordinator"]) == 12, want
        deadline = time.time() + 180
        while True:  # until every rank has checkpointed and evaluated, and the gang has formed
            assert run.poll() is None and time.time() < deadline, run.stdout.read() if run.poll() else "timeout"
            try:
                got = {"coordinator": served(port)}
                got.update({f"rank {local}": served(workers + local) for local in range(2)})
                if all("herd_checkpoint_seconds" in got[f"rank {local}"][0]
                       and "herd_eval_loss" in got[f"rank {local}"][0] for local in range(2)) and value(got["coordinator"][1], "herd_committed_step") >= 2:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert got["coordinator"][0] == want["coordinator"]
        ranks = set()
        for local in range(2):  # each worker's series carry its rank in the gang
            families, text = got[f"rank {local}"]
            assert families == want["worker"], local
            r = re.search(r'^herd_attempt\{rank="(\d+)"\} 1$', text, re.M).group(1)
            ranks.add(r)
            assert value(text, f'herd_peak_flops{{rank="{r}"}}') == 0.5e12
            assert value(text, f'herd_steps_total{{rank="{r}"}}') >= 2
        assert ranks == {"0", "1"}
        assert value(got["coordinator"][1], 'herd_job_state{state="RUNNING"}') == 1
        assert value(got["coordinator"][1], 'herd_workers{state="in_gang"}') == 2
        assert value(got["coordinator"][1], "herd_auth_failures_total") == 0
    finally:
        run.send_signal(signal.SIGINT)
        out, _ = run.communicate(timeout=120)
    assert run.returncode == 130, out

    steps = events(tmp_path)
    assert len(steps) >= 2
    runs = list((tmp_path / "trainer" / "runs").glob("events.out.tfevents.*"))
    assert len(runs) == 1, runs
    acc = EventAccumulator(str(runs[0].parent))
    acc.Reload()
    as_float32 = lambda v: float(np.float32(v))  # a TensorBoard scalar is a float32
    for tag, key in [("train/loss", "loss"), ("train/learning_rate", "learning_rate"),
                     ("train/grad_norm", "grad_norm"), ("train/tokens_per_second", "tokens_per_second"),
                     ("train/mfu", "mfu")]:
        assert [(e.step, e.value) for e in acc.Scalars(tag)] == [(s["step"], as_float32(s[key])) for s in steps], tag
    evals = events(tmp_path, "eval")
    assert evals and [(e.step, e.value) for e in acc.Scalars("eval/loss")] == \
        [(e["step"], as_float32(e["eval_loss"])) for e in evals]
    for s in steps:  # MFU: the step's model FLOPs over its time and the two ranks' peak
        assert s["mfu"] == s["model_flops"] / s["seconds"] / (2 * 0.5e12)
        assert s["hardware_flops"] > s["model_flops"] > 0
