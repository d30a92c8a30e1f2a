"""A tiny job's config; what a run left behind, read as values (its events file, its adapter), and
whether two runs trained alike; free ports for one; the commands docs/deploy.md gives."""
import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file


def make_tiny_model(d):
    """A 2-layer random Llama (hidden 64, GQA 4/2) with its tokenizer, made by herd, in d."""
    out = subprocess.run([str(Path(os.environ["HERD_BIN"]) / "herd"), "tools", "make-tiny-model", str(d), "--layers",
                          "2", "--hidden", "64", "--heads", "4", "--kv-heads", "2", "--intermediate", "128", "--seed",
                          "0"], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    return d


def config(path, model, out, accumulation, steps=12, extra="", lora_extra=""):
    """Global batch 2 x accumulation x ranks; dropout 0 so that ranks draw nothing. lora_extra: more keys of
    the lora section (", use_dora: true")."""
    path.write_text(f"""model_name: t
base_model: {model}
model_context_window: 128
data: {{type: vicuna, dataset: {Path(os.environ['HERD_SOURCE_DIR']) / 'data' / 'sample-vicuna.json'}}}
lora: {{r: 8, lora_alpha: 16, target_modules: all-linear, lora_dropout: 0.0, bias: none, task_type: CAUSAL_LM{lora_extra}}}
trainer: {{device: cpu, batch_size: 2, gradient_accumulation_steps: {accumulation}, warmup_steps: 3, num_train_epochs: 1,
          max_steps: {steps}, learning_rate: 0.01, logging_steps: 1, seed: 7}}
trainer_output_dir: {out}/trainer
model_output_dir: {out}/models
quantization: {{enabled: true, compute_dtype: float32}}
metrics: {{enabled: false}}
""" + extra)
    return path


def events(run_dir, event="step", trainer_dir="trainer"):
    """The run's records of one kind from {trainer_output_dir}/events.jsonl, in order (rank 0 writes
    them); none when there is no file yet."""
    path = run_dir / trainer_dir / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [r for r in map(json.loads, lines) if r["event"] == event]


def losses(run_dir):
    """Step -> loss, at full precision."""
    return {r["step"]: r["loss"] for r in events(run_dir)}


def adapter(run_dir, name="t"):
    return load_file(str(run_dir / "models" / f"{name}_adapter" / "adapter_model.safetensors"))


def assert_trains_as(run, want_losses, want_adapter, steps=8, adapter_atol=2e-5):
    """The run's losses (rel 1e-5) and adapter (abs 2e-5, unless told) are another's: sums over ranks
    round in an order of their own."""
    got = losses(run)
    assert sorted(got) == sorted(want_losses) == list(range(1, steps + 1))
    for step in want_losses:
        assert got[step] == pytest.approx(want_losses[step], rel=1e-5), step
    theirs = adapter(run)
    assert theirs.keys() == want_adapter.keys()
    for k in want_adapter:
        assert (theirs[k] - want_adapter[k]).abs().max().item() <= adapter_atol, k


def documented(section, program):
    """The lines of docs/deploy.md's fenced blocks in SECTION that run PROGRAM."""
    text = (Path(os.environ["HERD_SOURCE_DIR"]) / "docs" / "deploy.md").read_text()
    body = text[text.index(f"## {section}"):]
    body = body[:body.index("\n## ", 1)] if "\n## " in body[1:] else body
    blocks = re.findall(r"^```\n(.*?)^```", body, re.M | re.S)
    return [line for b in blocks for line in b.splitlines() if program in line]


def free_ports(n=1):
    """A port p with p .. p + n - 1 free (a worker's metrics port is worker_port + its local rank)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        socks = []
        try:
            for p in range(base, base + n):
                socks.append(socket.socket())
                socks[-1].bind(("0.0.0.0", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} free ports in a row")


def free_port():
    return free_ports(1)
