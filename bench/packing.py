"""Packed rows against one sample a row, on this machine (CPU): one epoch of the sample
conversations at context 1024, trained by `herd train` with the same settings but
data.packing. A ~20M-parameter Llama shape (4 layers, hidden 256, intermediate 688); the global
batch is 2 x 4 rows either way, so a packed step trains several conversations a row.

Reported per run: samples and rows per epoch (the coordinator's packing line), the packing
efficiency (real tokens / row capacity), optimizer steps, the epoch's wall time (the sum of the
steps' own times: data, forward, backward, optimizer, logging; model loading excluded) and
tokens per second; then packed as a ratio to unpacked. Unpacked rows are padded only to the
longest row of their micro-batch; packed rows fill most of the window, and their attention
runs over the whole row with a mask that keeps it inside each conversation.

    .venv/bin/python bench/packing.py [--context 1024] [--workdir build/bench-packing]
"""
import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERD = ROOT / "build" / "bin" / "herd"
PACKING = re.compile(r"^herd: packing: (\d+) samples in (\d+) rows of (\d+) tokens, ([\d.]+)% full$",
                     re.M)


def run(*args):
    out = subprocess.run([str(HERD), *map(str, args)], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"herd {' '.join(map(str, args))} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout + out.stderr


def config(path, model, out, context, packing):
    path.write_text(f"""model_name: bench
base_model: {model}
model_context_window: {context}
data: {{type: vicuna, dataset: {ROOT / 'data' / 'sample-vicuna.json'}, packing: {str(packing).lower()}}}
lora: {{r: 8, lora_alpha: 32, target_modules: [q_proj, k_proj, v_proj], lora_dropout: 0.0, bias: none,
       task_type: CAUSAL_LM}}
trainer: {{device: cpu, batch_size: 2, gradient_accumulation_steps: 4, warmup_steps: 1, num_train_epochs: 1,
          learning_rate: 0.0001, logging_steps: 1}}
trainer_output_dir: {out}/trainer
model_output_dir: {out}/models
quantization: {{compute_dtype: float32}}
checkpoint: {{every_steps: 100000}}
metrics: {{enabled: false}}
""")
    return path


def epoch(workdir, model, context, packing):
    out = workdir / ("packed" if packing else "unpacked")
    subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir(parents=True)
    printed = run("train", config(out / "c.yaml", model, out, context, packing))
    steps = [json.loads(l) for l in (out / "trainer" / "events.jsonl").read_text().splitlines()]
    steps = [s for s in steps if s["event"] == "step"]
    m = PACKING.search(printed)
    samples, rows, efficiency = (int(m.group(1)), int(m.group(2)), float(m.group(4)) / 100) if m else (None, None, None)
    seconds = sum(s["seconds"] for s in steps)
    tokens = sum(s["tokens"] for s in steps)
    return {"packing": packing, "samples": samples, "rows": rows, "efficiency": efficiency, "steps": len(steps),
            "seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench-packing")
    a = p.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    model = a.workdir / "llama-20m"
    if not (model / "config.json").exists():
        run("tools", "make-tiny-model", model, "--layers", 4, "--hidden", 256, "--heads", 4, "--kv-heads", 4,
            "--intermediate", 688, "--seed", 0)
    unpacked = epoch(a.workdir, model, a.context, False)
    unpacked["samples"] = unpacked["rows"] = unpacked["steps"] * 8 if unpacked["rows"] is None else unpacked["rows"]
    packed = epoch(a.workdir, model, a.context, True)
    if packed["rows"] is None:
        sys.exit("the packed run printed no packing line")
    if packed["tokens"] != unpacked["tokens"]:
        sys.exit(f"the runs trained different tokens: {packed['tokens']} packed, {unpacked['tokens']} unpacked")
    print(f"one epoch of the sample conversations at context {a.context}, global batch 8 rows, CPU:")
    for r in (unpacked, packed):
        eff = f", {100 * r['efficiency']:.1f}% full" if r["efficiency"] else ""
        print(f"  {'packed' if r['packing'] else 'unpacked':8}: {r['rows']} rows{eff}, {r['steps']} steps, "
              f"{r['seconds']:.1f} s, {r['tokens']} tokens, {r['tokens_per_second']:.0f} tokens/s")
    print(f"  packed / unpacked: rows {packed['rows'] / unpacked['rows']:.3f}, steps "
          f"{packed['steps'] / unpacked['steps']:.3f}, epoch time {packed['seconds'] / unpacked['seconds']:.3f}")
    print(json.dumps({"context": a.context, "unpacked": unpacked, "packed": packed}))


if __name__ == "__main__":
    main()
