#!/usr/bin/env python3
"""DoRA against LoRA on the demo (configs/tiny-demo.yaml as written, and the same with
lora.use_dora: true), on this machine's CPU: `herd train` runs of each, alternating.

Reported per run: the median step time (the steps' own times from events.jsonl: data,
forward, backward, optimizer, logging; model loading excluded), the mean loss of the
first and the last 50 steps, and the held-out eval loss at the end; then DoRA's median
step time as a ratio to LoRA's (each run against the LoRA run before it).

    .venv/bin/python bench/dora_demo.py [--runs 2] [--workdir build/bench-dora]

Needs the demo's model (scripts/demo makes build/demo/tiny-llama)."""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERD = ROOT / "build" / "bin" / "herd"


def config(work, dora):
    """The demo's YAML with its outputs in `work` (and DoRA on)."""
    text = (ROOT / "configs" / "tiny-demo.yaml").read_text()
    text = text.replace("trainer_output_dir: build/demo/trainer_outputs/", f"trainer_output_dir: {work}/trainer")
    text = text.replace("model_output_dir: build/demo/models/", f"model_output_dir: {work}/models")
    text = text.replace("metrics:  #", "metrics:\n  enabled: false  #").replace("  enabled: true\n", "")
    if dora:
        text = text.replace("  task_type: CAUSAL_LM\n", "  task_type: CAUSAL_LM\n  use_dora: true\n")
    assert str(work) in text and ("use_dora" in text) == dora
    path = work / "config.yaml"
    path.write_text(text)
    return path


def train(work, dora):
    work.mkdir(parents=True, exist_ok=True)
    for old in ("trainer", "models"):
        subprocess.run(["rm", "-rf", str(work / old)], check=True)
    out = subprocess.run([str(HERD), "train", str(config(work, dora))], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"herd train ({'DoRA' if dora else 'LoRA'}) failed:\n{out.stdout}\n{out.stderr}")
    events = [json.loads(line) for line in (work / "trainer" / "events.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["event"] == "step"]
    evals = [e for e in events if e["event"] == "eval"]
    losses = [s["loss"] for s in steps]
    return {"steps": len(steps), "step_s": statistics.median(s["seconds"] for s in steps),
            "first": statistics.mean(losses[:50]), "last": statistics.mean(losses[-50:]),
            "eval": evals[-1]["eval_loss"] if evals else float("nan")}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--workdir", default=str(ROOT / "build" / "bench-dora"))
    args = p.parse_args()
    if not (ROOT / "build" / "demo" / "tiny-llama" / "config.json").exists():
        sys.exit("no demo model: run scripts/demo first")
    work = Path(args.workdir)
    ratios = []
    print(f"{'':6} {'steps':>5} {'step ms':>8} {'loss 1-50':>10} {'loss last 50':>12} {'eval loss':>9}")
    for _ in range(args.runs):
        lora, dora = train(work / "lora", False), train(work / "dora", True)
        for name, r in (("LoRA", lora), ("DoRA", dora)):
            print(f"{name:6} {r['steps']:5} {r['step_s'] * 1e3:8.2f} {r['first']:10.4f} {r['last']:12.4f} "
                  f"{r['eval']:9.4f}")
        ratios.append(dora["step_s"] / lora["step_s"])
    print("DoRA / LoRA median step time: " + ", ".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
    main()
