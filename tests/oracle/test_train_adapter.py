"""The adapter `herd train` writes (over an NF4 or a dense base; LoRA or DoRA), loaded by
peft on the same base in transformers, gives the eval loss `herd eval` gives."""
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import LlamaForCausalLM

from conftest import herd, make_tiny_model
from test_eval import LINES, reference_loss

SRC = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("quantize,dora", [(True, False), (False, False), (True, True)])
def test_trained_adapter_gives_herds_eval_loss_in_peft(tiny_gqa, tmp_path, quantize, dora):
    config = tmp_path / "c.yaml"
    config.write_text(f"""model_name: t
base_model: {tiny_gqa}
model_context_window: 128
data: {{type: vicuna, dataset: {SRC / 'data' / 'sample-vicuna.json'}}}
lora: {{r: 4, lora_alpha: 8, target_modules: [q_proj, v_proj, down_proj], lora_dropout: 0.05, bias: none,
       task_type: CAUSAL_LM, use_dora: {'true' if dora else 'false'}}}
trainer: {{device: cpu, batch_size: 2, gradient_accumulation_steps: 2, warmup_steps: 2, num_train_epochs: 1, max_steps: 12,
          learning_rate: 0.01, logging_steps: 4}}
trainer_output_dir: {tmp_path}/trainer
model_output_dir: {tmp_path}/models
quantization: {{enabled: {'true' if quantize else 'false'}, compute_dtype: float32}}
metrics: {{enabled: false}}
""")
    herd("train", config)
    adapter = tmp_path / "models" / "t_adapter"
    settings = json.loads((adapter / "adapter_config.json").read_text())
    assert settings["r"] == 4 and settings["lora_alpha"] == 8 and settings["peft_type"] == "LORA"
    assert settings["use_dora"] is dora

    data = tmp_path / "lines.txt"
    data.write_text("\n".join(LINES) + "\n")
    base = LlamaForCausalLM.from_pretrained(str(tiny_gqa), torch_dtype=torch.float32).eval()
    plain, _ = reference_loss(tiny_gqa, base)
    tuned = PeftModel.from_pretrained(base, str(adapter)).eval()
    expected, tokens = reference_loss(tiny_gqa, tuned)
    got = json.loads(herd("eval", tiny_gqa, "--data", data, "--no-quantize", "--adapter", adapter, "--json").stdout)
    assert got["tokens"] == tokens
    assert abs(got["loss"] - expected) < 1e-5
    assert abs(expected - plain) > 1e-3  # training moved the adapter off its zero start


def orca_and_raw_text_data(tmp_path):
    """The sample conversations as Orca records (system turn, first question, first answer) and as one text file."""
    records = json.loads((SRC / "data" / "sample-vicuna.json").read_text())
    orca = []
    for r in records:
        turns = {}
        for t in r["conversations"]:
            turns.setdefault(t["from"], t["value"])
        orca.append({"id": r["id"], "system_prompt": turns.get("system", ""), "question": turns["human"],
                     "response": turns["gpt"]})
    (tmp_path / "orca.json").write_text(json.dumps(orca))
    (tmp_path / "text.txt").write_text("\n\n".join(t["value"] for r in records for t in r["conversations"]))
    return {
        "orca": f"""  type: orca
  dataset: {tmp_path / 'orca.json'}
  system_header: "### System:\\n"
  instruction_header: "### Instruction:\\n"
  response_header: "### Response:\\n"
""",
        "raw_text": f"""  type: raw_text
  text_files: [{tmp_path / 'text.txt'}]
  chunk_char_len: 300
  chunk_char_overlap: 50
  chunk_prefix: "Notes: "
""",
    }


@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    """The demo's model (weights of std 0.1: its frozen output layer can express a peaked distribution)."""
    return make_tiny_model(tmp_path_factory.mktemp("learnable") / "m", "--layers", "2", "--hidden", "64", "--heads",
                           "4", "--kv-heads", "2", "--intermediate", "128", "--seed", "0", "--init-std", "0.1")


@pytest.mark.parametrize("data_type", ["orca", "raw_text"])
def test_orca_and_raw_text_configs_train_and_the_adapter_loads_in_peft(learnable, tmp_path, data_type):
    tiny_gqa = learnable
    config = tmp_path / "c.yaml"
    config.write_text(f"""model_name: t
base_model: {tiny_gqa}
model_context_window: 96
data:
{orca_and_raw_text_data(tmp_path)[data_type]}lora: {{r: 8, lora_alpha: 16, target_modules: all-linear, lora_dropout: 0.0, bias: none,
       task_type: CAUSAL_LM}}
trainer: {{device: cpu, batch_size: 2, gradient_accumulation_steps: 1, warmup_steps: 2, num_train_epochs: 1, max_steps: 60,
          learning_rate: 0.01, logging_steps: 10}}
trainer_output_dir: {tmp_path}/trainer
model_output_dir: {tmp_path}/models
quantization: {{enabled: false}}
metrics: {{enabled: false}}
""")
    herd("train", config)
    steps = [json.loads(line) for line in (tmp_path / "trainer" / "events.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in steps if e["event"] == "step"]
    assert len(losses) == 60
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    print(f"{data_type}: mean loss of steps 1-10 {first:.3f}, of steps 51-60 {last:.3f}")
    assert last < first - 0.5, (first, last)

    data = tmp_path / "lines.txt"
    data.write_text("\n".join(LINES) + "\n")
    adapter = tmp_path / "models" / "t_adapter"
    base = LlamaForCausalLM.from_pretrained(str(tiny_gqa), torch_dtype=torch.float32).eval()
    expected, tokens = reference_loss(tiny_gqa, PeftModel.from_pretrained(base, str(adapter)).eval())
    got = json.loads(herd("eval", tiny_gqa, "--data", data, "--no-quantize", "--adapter", adapter, "--json").stdout)
    assert got["tokens"] == tokens and abs(got["loss"] - expected) < 1e-5
