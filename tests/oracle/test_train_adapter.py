"""The adapter `herd train` writes (over an NF4 or a dense base), loaded by peft on
the same base in transformers, gives the eval loss `herd eval` gives."""
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import LlamaForCausalLM

from conftest import herd
from test_eval import LINES, reference_loss

SRC = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("quantize", [True, False])
def test_trained_adapter_gives_herds_eval_loss_in_peft(tiny_gqa, tmp_path, quantize):
    config = tmp_path / "c.yaml"
    config.write_text(f"""model_name: t
base_model: {tiny_gqa}
model_context_window: 128
data: {{type: vicuna, dataset: {SRC / 'data' / 'sample-vicuna.json'}}}
lora: {{r: 4, lora_alpha: 8, target_modules: [q_proj, v_proj, down_proj], lora_dropout: 0.05, bias: none,
       task_type: CAUSAL_LM}}
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
