"""herd's Llama (quantization off, float32) against transformers' LlamaForCausalLM
on the same random checkpoint."""
import shutil

import pytest
import torch
from transformers import LlamaForCausalLM

from conftest import edit_config, herd_logits, make_tiny_model

ROWS = [[1, 17, 42, 99, 250, 3, 7, 511, 64, 12], [1, 300, 5, 77]]


def hf_logits(model_dir, ids, mask):
    model = LlamaForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def max_diff_on_real_tokens(a, b, mask):
    m = mask.bool()
    return (a[m] - b[m]).abs().max().item()


def test_gqa_logits_match_transformers(tiny_gqa):
    logits, ids, mask = herd_logits(tiny_gqa, ROWS, "--no-quantize")
    expected = hf_logits(tiny_gqa, ids, mask)
    assert logits.shape == (2, 10, 512)
    diff = max_diff_on_real_tokens(logits, expected, mask)
    assert diff < 1e-4, diff


@pytest.mark.parametrize("variant", ["tied", "llama3_rope", "linear_rope", "mha"])
def test_variants_match_transformers(tmp_path, variant):
    extra = {"tied": ["--tie-embeddings"], "mha": ["--heads", "4", "--kv-heads", "4"]}.get(variant, [])
    model = make_tiny_model(tmp_path / variant, "--layers", "2", "--hidden", "64", "--heads", "4", "--kv-heads", "1",
                            *extra) if variant != "mha" else make_tiny_model(tmp_path / variant, *extra)
    if variant == "llama3_rope":
        edit_config(model, rope_theta=500000.0, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8})
    if variant == "linear_rope":
        edit_config(model, rope_scaling={"rope_type": "linear", "factor": 4.0})
    logits, ids, mask = herd_logits(model, ROWS, "--no-quantize")
    diff = max_diff_on_real_tokens(logits, hf_logits(model, ids, mask), mask)
    assert diff < 1e-4, (variant, diff)


def test_a_wrong_model_is_detected(tiny_gqa, tmp_path):
    """The comparison can fail: perturb one norm weight and the logits part."""
    from safetensors.torch import load_file, save_file
    broken = tmp_path / "broken"
    shutil.copytree(tiny_gqa, broken)
    tensors = load_file(str(broken / "model.safetensors"))
    tensors["model.layers.1.post_attention_layernorm.weight"][3] += 0.5
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    logits, ids, mask = herd_logits(tiny_gqa, ROWS, "--no-quantize")
    assert max_diff_on_real_tokens(logits, hf_logits(broken, ids, mask), mask) > 1e-3
