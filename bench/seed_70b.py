#!/usr/bin/env python3
"""The seed's job, measured whole on one GPU: `herd train` on a random Llama-2-70B in herd's NF4
layout (`herd tools make-model --shape llama-2-70b --nf4`, about 36 GB), LoRA r 8 on q/k/v, batch 1 x
accumulation 4, context 4,096, on the sample conversations scaled to the seed's ~1,000 tokens on
average. Runs (each its own `herd train`, every step timed whole: data, optimizer and logging in):

  bf16       trainer.bf16: true, 20 optimizer steps
  seed       the seed's YAML as written (float32 hidden stream), 20 steps
  bf16-4096  trainer.bf16: true with every row 4,096 tokens long, 5 steps (the throughput target's rows)
  two-ranks  two `herd worker` processes on this one GPU, Gloo between them, each capped at 24 GB
             (HERD_GPU_MEMORY_LIMIT), 2,048-token rows with the memory features `herd plan` names for
             that size, 3 steps of accumulation 1

For each: tokens/s over the steps after the first, MFU (model FLOPs) and HFU (hardware FLOPs: the
recompute included) against the GPU's dense bf16 peak, the allocator's peak (the done event's
training_memory_bytes) against `herd plan` and the seed's 40.8 GB.

    python3 bench/seed_70b.py HERD_BIN_DIR WORK_DIR [--model-only] [--runs bf16,seed,...] [--smoke]

--smoke: the same runs on the CPU, of a Llama-2-7B shape cut to one layer, 2 steps each (a check of
this script, not a measurement).

Prints one line a run and writes WORK_DIR/seed-70b.json. Exit 1 if a run failed.
"""
import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent
SEED_GB = 40.8  # the seed's reported peak
GIB = 2 ** 30


def herd(bin_dir, *args, env=None, timeout=1800):
    out = subprocess.run([str(bin_dir / "herd"), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                         env=env)
    if out.returncode != 0:
        raise RuntimeError(f"herd {' '.join(map(str, args))}: exit {out.returncode}\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    return out.stdout


def lengths(bin_dir, data, model, context):
    out = json.loads(herd(bin_dir, "data", "inspect", "--data", data, "--tokenizer", model, "--context", context,
                          "--json"))
    return [len(s["token_ids"]) for s in out]


def scaled_data(bin_dir, work, model, target_mean, name):
    """The sample conversations with every message repeated k times, k chosen for the target mean."""
    sample = json.loads((SRC / "data" / "sample-vicuna.json").read_text())
    base = lengths(bin_dir, SRC / "data" / "sample-vicuna.json", model, 1 << 20)
    k = max(1, round(target_mean / (sum(base) / len(base))))
    for record in sample:
        for turn in record["conversations"]:
            turn["value"] = " ".join([turn["value"]] * k)
    path = work / f"{name}.json"
    path.write_text(json.dumps(sample))
    return path


SMOKE = False


def config(work, name, model, data, extra_trainer="", context=4096, extra=""):
    text = (SRC / "configs" / "llama2_70b_chat_uncensored.yaml").read_text()
    text = text.replace("base_model: TheBloke/Llama-2-70B-fp16", f"base_model: {model}")
    text = text.replace("dataset: ehartford/wizard_vicuna_70k_unfiltered  # HuggingFace hub", f"dataset: {data}")
    text = text.replace("model_context_window: 4096", f"model_context_window: {context}")
    if SMOKE:
        extra_trainer = "".join(l + "\n" for l in extra_trainer.splitlines() if "max_steps" not in l) + "  max_steps: 2\n"
    text = text.replace("  logging_steps: 20\n",
                        f"  logging_steps: 5\n  device: {'cpu' if SMOKE else 'cuda'}\n{extra_trainer}")
    text = text.replace("trainer_output_dir: trainer_outputs/", f"trainer_output_dir: {work / name / 'trainer'}")
    text = text.replace("model_output_dir: models/", f"model_output_dir: {work / name / 'models'}")
    text += "metrics: {enabled: false}\n" + extra
    path = work / f"{name}.yaml"
    path.write_text(text)
    return path


def summary(bin_dir, name, cfg, run_dir, longest, workers=1):
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["event"] == "step"]
    [done] = [e for e in events if e["event"] == "done"]
    timed = steps[1:] or steps
    seconds = sum(e["seconds"] for e in timed)
    tokens = sum(e["tokens"] for e in timed)
    mfu = [e["mfu"] for e in timed if e.get("mfu")]
    # MFU = model_flops / (seconds x peak x ranks): the peak follows from the first step's figures.
    peak = timed[0]["model_flops"] / (timed[0]["seconds"] * timed[0]["mfu"]) if mfu else None
    row = {"run": name, "steps": len(steps), "timed_steps": len(timed), "tokens": tokens, "seconds": seconds,
           "tokens_per_second": tokens / seconds,
           "mfu": sum(e["model_flops"] for e in timed) / (seconds * peak) if peak else None,
           "hfu": sum(e["hardware_flops"] for e in timed) / (seconds * peak) if peak else None,
           "training_memory_bytes": done.get("training_memory_bytes"), "peak_memory_bytes": done.get("peak_memory_bytes"),
           "final_loss": steps[-1]["loss"], "longest_row": longest}
    args = ["plan", cfg, "--json", "--workers", workers]
    row["plan_bytes_longest_row"] = json.loads(herd(bin_dir, *args, "--tokens", longest))["total_bytes"]
    row["plan_bytes_full_context"] = json.loads(herd(bin_dir, *args))["total_bytes"]
    return row


def line(r):
    mem = r["training_memory_bytes"] or 0
    pct = lambda v: f"{100 * v:.1f}%" if v is not None else "n/a"
    return (f"seed-70b {r['run']}: {r['steps']} steps, {r['tokens_per_second']:.0f} tokens/s over steps 2-{r['steps']} "
            f"({r['tokens']} tokens in {r['seconds']:.1f} s), MFU {pct(r['mfu'])}, HFU {pct(r['hfu'])}; allocator "
            f"peak {mem / GIB:.2f} GiB ({mem / 1e9:.1f} GB) against the plan's {r['plan_bytes_longest_row'] / GIB:.2f} "
            f"GiB at its longest row ({r['longest_row']} tokens; {r['plan_bytes_full_context'] / GIB:.2f} at the full "
            f"context) and the seed's {SEED_GB} GB; last loss {r['final_loss']:.4f}")


def two_ranks(bin_dir, work, model, data):
    plan_cfg = config(work, "two-ranks-plan", model, data, "  bf16: true\n", context=2048)
    plan = json.loads(herd(bin_dir, "plan", plan_cfg, "--json", "--workers", 2, "--gpu-mem", "24GB"))
    keys = "".join(f"  {k.split('.', 1)[1]}: {v}\n" for k, v in plan.get("to_fit", {}).get("changes", {}).items()
                   if k.startswith("trainer.") and k != "trainer.bf16")
    cfg = config(work, "two-ranks", model, data, "  bf16: true\n" + keys, context=2048,
                 extra="distributed: {world_size: 2, backend: gloo}\n")
    cfg.write_text(cfg.read_text().replace("gradient_accumulation_steps: 4", "gradient_accumulation_steps: 1")
                   .replace("  logging_steps: 5\n", "  logging_steps: 1\n" + ("" if SMOKE else "  max_steps: 3\n")))
    port = 29500 + secrets.randbelow(1000)
    env = dict(os.environ, HERD_JOB_TOKEN=secrets.token_hex(16), HERD_GPU_MEMORY_LIMIT="24GB", WORLD_SIZE="2",
               LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    logs = [open(work / f"two-ranks-{r}.log", "w") for r in (0, 1)]
    procs = []
    for r in (0, 1):
        procs.append(subprocess.Popen([str(bin_dir / "herd"), "worker", str(cfg)], stdout=logs[r],
                                      stderr=subprocess.STDOUT, env=dict(env, RANK=str(r))))
        time.sleep(3)  # rank 0 hosts the coordinator
    codes = [p.wait(timeout=1500) for p in procs]
    for f in logs:
        f.close()
    print(f"two-ranks: plan for 2 x 24 GB at 2,048 tokens: {json.dumps(plan.get('to_fit'))}; exit codes {codes}")
    for r in (0, 1):
        print(f"--- rank {r}, last lines:\n" + "".join((work / f"two-ranks-{r}.log").read_text().splitlines(True)[-15:]))
    if codes != [0, 0]:
        raise RuntimeError(f"two ranks on one GPU, capped at 24 GB: exit codes {codes}")
    return cfg


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("bin_dir", type=Path)
    p.add_argument("work", type=Path)
    p.add_argument("--model-only", action="store_true")
    p.add_argument("--runs", default="bf16,seed,bf16-4096,two-ranks")
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args()
    global SMOKE
    SMOKE = a.smoke
    a.work.mkdir(parents=True, exist_ok=True)
    model = a.work / "model"
    if not (model / "config.json").exists():
        start = time.time()
        shape = ["llama-2-7b", "--layers", 1] if SMOKE else ["llama-2-70b"]
        herd(a.bin_dir, "tools", "make-model", "--shape", *shape, "--nf4", model, timeout=3600)
        print(f"made the random Llama-2-70B (NF4) in {time.time() - start:.0f} s")
    if a.model_only:
        return 0
    data = scaled_data(a.bin_dir, a.work, model, 1000, "conversations")
    rows = [min(n, 4096) for n in lengths(a.bin_dir, data, model, 4096)]
    print(f"conversations: {len(rows)}, mean {sum(rows) / len(rows):.0f} tokens, longest {max(rows)} (context 4,096)")
    long_data = scaled_data(a.bin_dir, a.work, model, 6000, "long")
    results, failures = [], 0
    runs = {
        "bf16": lambda: config(a.work, "bf16", model, data, "  bf16: true\n  max_steps: 20\n"),
        "seed": lambda: config(a.work, "seed", model, data, "  max_steps: 20\n"),
        "bf16-4096": lambda: config(a.work, "bf16-4096", model, long_data, "  bf16: true\n  max_steps: 5\n"),
    }
    for name in a.runs.split(","):
        try:
            start = time.time()
            if name == "two-ranks":
                cfg, workers, longest = two_ranks(a.bin_dir, a.work, model, data), 2, 2048
            else:
                cfg, workers, longest = runs[name](), 1, 4096 if name == "bf16-4096" else max(rows)
                out = herd(a.bin_dir, "train", cfg, timeout=3000)
                print(out[out.find("training "):])
            r = summary(a.bin_dir, name, cfg, a.work / name / "trainer", longest, workers)
            r["wall_seconds"] = time.time() - start
            results.append(r)
            print(line(r), flush=True)
        except Exception as e:  # every failure printed, the other runs still measured
            failures += 1
            print(f"seed-70b {name}: FAILED: {e}", flush=True)
    (a.work / "seed-70b.json").write_text(json.dumps(results, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
