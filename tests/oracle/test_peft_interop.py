"""Adapters written by herd load in peft, adapters written by peft load in herd, and
both give the same outputs."""
import json

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from transformers import LlamaForCausalLM

from conftest import herd, herd_logits

ROWS = [[1, 17, 42, 99, 250, 3, 7, 511], [1, 300, 5]]


def base(model_dir):
    return LlamaForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()


def logits_of(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def real(t, mask):
    return t[mask.bool()]


def test_herd_adapter_loads_in_peft(tiny_gqa, tmp_path):
    adapter = tmp_path / "herd-adapter"
    herd("tools", "init-adapter", tiny_gqa, adapter, "--r", "4", "--alpha", "8", "--targets", "q_proj,k_proj,v_proj",
         "--random-b", "--seed", "5")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["target_modules"] == ["q_proj", "k_proj", "v_proj"]
    logits, ids, mask = herd_logits(tiny_gqa, ROWS, "--no-quantize", "--adapter", adapter)
    peft_model = PeftModel.from_pretrained(base(tiny_gqa), str(adapter)).eval()
    expected = logits_of(peft_model, ids, mask)
    without = logits_of(base(tiny_gqa), ids, mask)
    assert (real(logits, mask) - real(expected, mask)).abs().max() < 1e-4
    # The adapter matters: without it the logits differ.
    assert (real(expected, mask) - real(without, mask)).abs().max() > 1e-3


def test_peft_adapter_loads_in_herd_with_the_same_names(tiny_gqa, tmp_path):
    model = get_peft_model(base(tiny_gqa), LoraConfig(
        r=4, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM", init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    model.eval()
    peft_dir = tmp_path / "peft-adapter"
    model.save_pretrained(str(peft_dir))
    logits, ids, mask = herd_logits(tiny_gqa, ROWS, "--no-quantize", "--adapter", peft_dir)
    assert (real(logits, mask) - real(logits_of(model, ids, mask), mask)).abs().max() < 1e-4

    # herd writes the same tensor names and shapes as peft for the same settings.
    herd_dir = tmp_path / "herd-adapter"
    herd("tools", "init-adapter", tiny_gqa, herd_dir, "--r", "4", "--alpha", "16", "--targets",
         "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")

    def layout(d):
        with safe_open(str(d / "adapter_model.safetensors"), "pt") as f:
            return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}

    assert layout(herd_dir) == layout(peft_dir)
    assert len(layout(herd_dir)) == 2 * 7 * 2


def test_a_mismatched_adapter_is_refused(tiny_gqa, tmp_path):
    adapter = tmp_path / "a"
    herd("tools", "init-adapter", tiny_gqa, adapter, "--r", "4", "--targets", "q_proj")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["r"] = 8
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    out = herd("tools", "logits", tiny_gqa, "--ids", "1,2", "--out", tmp_path / "x.safetensors", "--adapter", adapter,
               check=False)
    assert out.returncode == 1
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' is [4, 64] but the model needs [8, 64]" \
        in out.stderr
