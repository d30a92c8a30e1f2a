"""Sharded workers against one unsharded worker on this machine (CPU, Gloo over loopback).

1. Memory: a ~200M-parameter Llama shape (16 layers, hidden 1024, intermediate 2816) loaded NF4
   by 1, 2 and 4 workers (full_shard): the frozen bytes each rank holds between uses and its
   resident memory after loading.
2. Step time: the same global batch (2 x 4 rows of up to 256 tokens) on the same model trained by
   one worker (`herd train`, no sharding) and by 2 full_shard and 2 no_shard worker processes
   (`herd train --workers 2`): tokens per second, as ratios to the one worker.

    .venv/bin/python bench/distributed_step.py [--steps 6] [--workdir build/bench-distributed]
"""
import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERD = ROOT / "build" / "bin" / "herd"
HELD = re.compile(r"^rank (\d+) of (\d+) \(attempt \d+\): base weights held (\d+) of (\d+) bytes; resident (\d+) MiB$",
                  re.M)
DONE = re.compile(r"^done: (\d+) steps in [\d:]+, (\d+) tokens, (\d+) tokens/s", re.M)


def run(*args):
    out = subprocess.run([str(HERD), *map(str, args)], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"herd {' '.join(map(str, args))} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def config(path, model, out, accumulation, steps, sharding="full_shard"):
    path.write_text(f"""model_name: bench
base_model: {model}
model_context_window: 256
data: {{type: vicuna, dataset: {ROOT / 'data' / 'sample-vicuna.json'}}}
lora: {{r: 8, lora_alpha: 32, target_modules: [q_proj, k_proj, v_proj], lora_dropout: 0.0, bias: none,
       task_type: CAUSAL_LM}}
trainer: {{device: cpu, batch_size: 2, gradient_accumulation_steps: {accumulation}, warmup_steps: 1, num_train_epochs: 1, max_steps: {steps},
          learning_rate: 0.0001, logging_steps: 1}}
trainer_output_dir: {out}/trainer
model_output_dir: {out}/models
quantization: {{compute_dtype: float32}}
distributed: {{backend: gloo, sharding: {sharding}}}
checkpoint: {{every_steps: 100000}}
metrics: {{enabled: false}}
""")
    return path


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench-distributed")
    a = p.parse_args()
    w = a.workdir
    w.mkdir(parents=True, exist_ok=True)
    model = w / "llama-200m"
    if not (model / "config.json").exists():
        run("tools", "make-tiny-model", model, "--layers", 16, "--hidden", 1024, "--heads", 16, "--kv-heads", 16,
            "--intermediate", 2816, "--seed", 0)

    print("1. frozen base weights per rank, ~200M-parameter shape (NF4, full_shard)")
    print(f"{'workers':>8} {'held MiB':>10} {'of MiB':>8} {'held x N / model':>17} {'resident MiB (max rank)':>24}")
    for n in (1, 2, 4):
        c = config(w / f"mem{n}.yaml", model, w / f"mem{n}", accumulation=max(1, 4 // n), steps=1)
        out = run("train", c, "--workers", n)
        rows = [tuple(map(int, m.groups())) for m in HELD.finditer(out)]
        held, whole = rows[0][2], rows[0][3]
        print(f"{n:>8} {held / 2**20:>10.1f} {whole / 2**20:>8.1f} {held * n / whole:>17.3f} "
              f"{max(r[4] for r in rows):>24}")

    print(f"\n2. tokens/s over {a.steps} steps, global batch 8 rows, same model")
    base = None
    for i, (label, args, acc, sharding) in enumerate([("1 worker", [], 4, "full_shard"),
                                                      ("2 workers, full_shard", ["--workers", 2], 2, "full_shard"),
                                                      ("2 workers, no_shard", ["--workers", 2], 2, "no_shard")]):
        c = config(w / f"step{i}.yaml", model, w / f"step{i}", accumulation=acc, steps=a.steps, sharding=sharding)
        m = DONE.search(run("train", c, *args))
        tps = int(m.group(3))
        base = base or tps
        print(f"{label:>24}: {tps:>7} tokens/s  ({tps / base:.2f}x)")


if __name__ == "__main__":
    main()
