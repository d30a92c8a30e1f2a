"""`herd plan` against what `herd train` measures on the CPU: for the Llama-2-13B shape cut to 2
layers at 256-token rows where the frozen weights dominate, with a float32 and with a bfloat16
hidden stream (which keeps the frozen embedding and lm_head in bfloat16), and cut to 1 layer at 768,
where one layer's recomputation and the logits weigh more, and at 1,536 with the loss in chunks of 256
positions (the logits would be 0.75 GiB whole; random models made by
`herd tools make-model --nf4`), the memory training holds (the `done`
event's training_memory_bytes: the resident set's peak after the model is loaded, less the resident
set before it) is within 15% of the plan's total (`herd plan --json`)."""
import json
import os
import subprocess
from pathlib import Path

import pytest

BIN = Path(os.environ["HERD_BIN"])


def herd(*args, timeout=600):
    out = subprocess.run([str(BIN / "herd"), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                         env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.mark.parametrize("shape,layers,tokens,bf16,chunk", [
    ("llama-2-13b", 2, 256, False, 0), ("llama-2-13b", 2, 256, True, 0), ("llama-2-13b", 1, 768, False, 0),
    ("llama-2-13b", 1, 1536, False, 256)])
def test_the_plan_is_within_15_percent_of_the_measured_peak(tmp_path, shape, layers, tokens, bf16, chunk):
    herd("tools", "make-model", tmp_path / "model", "--shape", shape, "--layers", layers, "--nf4")
    # Rows longer than the context: every row is `tokens` long, as the plan assumes.
    (tmp_path / "data.json").write_text(json.dumps([{"id": str(i), "conversations": [
        {"from": "human", "value": f"How many steps does worker {i} train? " * (tokens // 8)},
        {"from": "gpt", "value": f"Worker {i} trains {7 * i} steps and checks the loss. " * (tokens // 8)}]}
        for i in range(2)]))
    config = tmp_path / "c.yaml"
    config.write_text(f"""model_name: m
base_model: {tmp_path / 'model'}
model_context_window: {tokens}
data: {{type: vicuna, dataset: {tmp_path / 'data.json'}}}
lora: {{r: 8, lora_alpha: 32, target_modules: [q_proj, k_proj, v_proj], lora_dropout: 0.0, bias: none,
       task_type: CAUSAL_LM}}
trainer: {{device: cpu, bf16: {str(bf16).lower()}, loss_chunk_tokens: {chunk}, batch_size: 1, gradient_accumulation_steps: 1, warmup_steps: 1, num_train_epochs: 1,
          max_steps: 2, learning_rate: 0.0001, logging_steps: 1}}
trainer_output_dir: {tmp_path}/trainer
model_output_dir: {tmp_path}/models
quantization: {{compute_dtype: float32}}
metrics: {{enabled: false}}
""")
    plan = json.loads(herd("plan", config, "--json"))
    assert plan["tokens"] == tokens and plan["total_bytes"] == pytest.approx(sum(i["bytes"] for i in plan["items"]))
    herd("train", config)
    events = [json.loads(line) for line in (tmp_path / "trainer" / "events.jsonl").read_text().splitlines()]
    [done] = [e for e in events if e["event"] == "done"]
    assert done["tokens"] == 2 * tokens
    # The random model trains as a model: about ln(32000) + (logit std ~1.4)^2 / 2 a token.
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert len(losses) == 2 and all(9.5 < loss < 13 for loss in losses), losses
    measured, planned = done["training_memory_bytes"], plan["total_bytes"]
    print(f"{shape} x {layers} layers, {tokens} tokens{', bfloat16 stream' if bf16 else ''}"
          f"{f', loss in chunks of {chunk}' if chunk else ''}: measured {measured / 2**30:.3f} GiB, "
          f"planned {planned / 2**30:.3f} GiB ({measured / planned - 1:+.1%})")
    assert abs(measured / planned - 1) <= 0.15
