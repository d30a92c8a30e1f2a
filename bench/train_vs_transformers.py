#!/usr/bin/env python3
"""A ~100M-parameter Llama shape trained for a few steps by `herd train` and by
transformers + peft on the same batches, on CPU with the same threads: tokens/s and
peak memory (each in its own process), as ratios herd / transformers.

Every conversation of the data file is the same one, so whatever order either side
draws them in, every batch is the same: `batch_size` copies of it. Both sides train
LoRA r 8 (alpha 32, dropout 0.05) on q/k/v of a float32 base, AdamW, activation
checkpointing on, loss on every token.

Usage: bench/train_vs_transformers.py BUILD_BIN WORKDIR [STEPS]"""
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

# 14 layers of 7.1M parameters + 0.8M of embeddings and head (vocabulary 512: the
# tokenizer is trained on herd's small built-in text): 100M parameters.
SHAPE = ["--layers", "14", "--hidden", "768", "--heads", "12", "--kv-heads", "12", "--intermediate", "2048",
         "--seed", "0"]
CONTEXT, BATCH = 256, 2


def transformers_run(model_dir, data, steps, threads):
    """Runs in a child process: its peak RSS is its own."""
    import torch
    import sentencepiece as spm
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    conv = json.loads(Path(data).read_text())[0]["conversations"]
    text = "".join(("### HUMAN:\n" if t["from"] == "human" else "### RESPONSE:\n") + t["value"] + "\n\n"
                   for t in conv)
    sp = spm.SentencePieceProcessor(model_file=str(Path(model_dir) / "tokenizer.model"))
    ids = ([1] + sp.encode(text) + [2])[:CONTEXT]
    batch = torch.tensor([ids] * BATCH)
    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05,
                                             target_modules=["q_proj", "k_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    start = None
    for step in range(steps + 1):  # step 0 warms up, untimed
        if step == 1:
            start = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad()
    seconds = time.perf_counter() - start
    print(json.dumps({"tokens_per_second": steps * batch.numel() / seconds, "tokens_per_step": batch.numel(),
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main():
    if sys.argv[1] == "--transformers":
        return transformers_run(*sys.argv[2:4], int(sys.argv[4]), int(sys.argv[5]))
    herd_bin, work = Path(sys.argv[1]), Path(sys.argv[2])
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    threads = os.cpu_count()
    work.mkdir(parents=True, exist_ok=True)
    model = work / "llama-100m"
    if not (model / "config.json").exists():
        subprocess.run([str(herd_bin / "herd"), "tools", "make-tiny-model", str(model), *SHAPE], check=True,
                       capture_output=True)
    src = Path(__file__).resolve().parents[1]
    one = json.loads((src / "data" / "sample-vicuna.json").read_text())[0]
    one["conversations"] = [t for t in one["conversations"] if t["from"] != "system"]
    data = work / "same.json"
    data.write_text(json.dumps([dict(one, id=f"c{i}") for i in range(64)]))
    def herd_run(max_steps):
        config = work / f"bench-{max_steps}.yaml"
        config.write_text(f"""model_name: bench
base_model: {model}
model_context_window: {CONTEXT}
data: {{type: vicuna, dataset: {data}}}
lora: {{r: 8, lora_alpha: 32, target_modules: [q_proj, k_proj, v_proj], lora_dropout: 0.05, bias: none,
       task_type: CAUSAL_LM}}
trainer: {{device: cpu, batch_size: {BATCH}, gradient_accumulation_steps: 1, warmup_steps: 0, num_train_epochs: 1,
          max_steps: {max_steps}, learning_rate: 0.0001, logging_steps: 1}}
trainer_output_dir: {work}/trainer-{max_steps}
model_output_dir: {work}/models-{max_steps}
quantization: {{enabled: false, compute_dtype: float32}}
checkpoint: {{every_steps: 1000}}
metrics: {{enabled: false}}
""")
        start = time.perf_counter()
        out = subprocess.run([str(herd_bin / "herd"), "train", str(config)], capture_output=True, text=True,
                             check=True).stdout
        return time.perf_counter() - start, out

    # herd's steady state: the difference between a 1-step and a (1 + steps)-step run
    # (loading, the first step and writing the adapter cancel out).
    short_s, _ = herd_run(1)
    long_s, out = herd_run(steps + 1)
    tokens = int(re.search(r"done: \d+ steps in [\d:]+, (\d+) tokens", out).group(1))
    per_step = tokens // (steps + 1)
    herd = {"tokens_per_second": steps * per_step / (long_s - short_s), "tokens_per_step": per_step,
            "peak_rss_mib": float(re.search(r"peak memory (\d+) MiB", out).group(1))}
    hf = json.loads(subprocess.run([sys.executable, __file__, "--transformers", str(model), str(data), str(steps),
                                    str(threads)], capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    params = json.loads((model / "config.json").read_text())
    print(json.dumps({"steps": steps, "threads": threads, "model": {k: params[k] for k in (
        "num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size")}, "herd": herd, "transformers": hf,
        "herd/transformers tokens/s": herd["tokens_per_second"] / hf["tokens_per_second"],
        "herd/transformers peak memory": herd["peak_rss_mib"] / hf["peak_rss_mib"]}, indent=1))


if __name__ == "__main__":
    main()
