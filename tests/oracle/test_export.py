"""`herd export gguf`: the file read back by the `gguf` package (llama.cpp's own Python reader): GGUF
version 3, llama's metadata keys with the model's values, the tokenizer as SentencePiece reads
tokenizer.model, a chat template of the seed's prompt style, and every tensor under llama.cpp's name
with the source's values (q and k rows permuted as convert_hf_to_gguf.py permutes them) in the asked
type."""
import json

import gguf
import jinja2
import numpy as np
import pytest
import sentencepiece
import torch
from gguf.quants import dequantize

from conftest import herd
from test_make_model import tensors

NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
         "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
         "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def gguf_name(hf):
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, layer, rest = hf.split(".", 3)
    return f"blk.{layer}.{NAMES[rest.removesuffix('.weight')]}.weight"


def permute(w, heads):
    """convert_hf_to_gguf.py's LlamaModel.permute."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def field(reader, key):
    return reader.fields[key].contents()


@pytest.mark.parametrize("kind", ["f16", "bf16", "q8_0"])
def test_gguf_reads_back_with_the_models_metadata_tokenizer_and_tensors(tiny_gqa, tmp_path, kind):
    out = tmp_path / f"m-{kind}.gguf"
    herd("export", "gguf", tiny_gqa, out, "--type", kind)
    r = gguf.GGUFReader(str(out))
    cfg = json.loads((tiny_gqa / "config.json").read_text())
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    assert field(r, "GGUF.version") == 3
    want = {"general.architecture": "llama", "general.name": tiny_gqa.name,
            "general.file_type": {"f16": 1, "bf16": 32, "q8_0": 7}[kind],
            "general.quantization_version": 2,
            "llama.vocab_size": cfg["vocab_size"], "llama.context_length": cfg["max_position_embeddings"],
            "llama.embedding_length": cfg["hidden_size"], "llama.block_count": cfg["num_hidden_layers"],
            "llama.feed_forward_length": cfg["intermediate_size"],
            "llama.rope.dimension_count": cfg["hidden_size"] // heads, "llama.attention.head_count": heads,
            "llama.attention.head_count_kv": kv, "tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default",
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.add_bos_token": True,
            "tokenizer.ggml.add_eos_token": False}
    for key, value in want.items():
        assert field(r, key) == value, key
    assert field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(cfg["rms_norm_eps"], rel=1e-6)
    assert field(r, "llama.rope.freq_base") == pytest.approx(cfg.get("rope_theta", 10000.0))
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tiny_gqa / "tokenizer.model"))
    n = sp.get_piece_size()
    assert field(r, "tokenizer.ggml.tokens") == [sp.id_to_piece(i) for i in range(n)]
    assert np.allclose(field(r, "tokenizer.ggml.scores"), [sp.get_score(i) for i in range(n)])
    types = [6 if sp.is_byte(i) else 3 if sp.is_control(i) else 2 if sp.is_unknown(i) else 5 if sp.is_unused(i)
             else 1 for i in range(n)]
    assert field(r, "tokenizer.ggml.token_type") == types
    keys = {k for k in r.fields if not k.startswith("GGUF.")}
    assert keys == set(want) | {"llama.attention.layer_norm_rms_epsilon", "llama.rope.freq_base",
                                "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                                "tokenizer.chat_template"}
    template = jinja2.Template(field(r, "tokenizer.chat_template"))
    text = template.render(messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
                                     {"role": "user", "content": "More"}], add_generation_prompt=True,
                           eos_token="</s>")
    assert text == "### HUMAN:\nHi\n\n### RESPONSE:\nYo</s>\n\n### HUMAN:\nMore\n\n### RESPONSE:\n"

    source = tensors(tiny_gqa)
    got = {t.name: t for t in r.tensors}
    assert set(got) == {gguf_name(k) for k in source}
    for hf, w in source.items():
        t = got[gguf_name(hf)]
        w = w.float().numpy()
        if ".q_proj." in hf:
            w = permute(w, heads)
        if ".k_proj." in hf:
            w = permute(w, kv)
        assert list(t.shape) == list(reversed(w.shape)), hf  # ggml's ne order: innermost first
        values = dequantize(t.data, t.tensor_type).reshape(w.shape)
        if w.ndim == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32 and np.array_equal(values, w), hf
        elif kind == "f16":
            assert np.array_equal(values, w.astype(np.float16).astype(np.float32)), hf
        elif kind == "bf16":
            assert np.array_equal(values, torch.from_numpy(w).bfloat16().float().numpy()), hf
        else:  # ggml's quantize_row_q8_0_ref, in float32: d = max|x| / 127 as float16, round(x * (1 / d))
            assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
            blocks = w.reshape(-1, 32).astype(np.float32)
            d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
            inverse = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
            v = (blocks * inverse).astype(np.float64)
            q = np.sign(v) * np.floor(np.abs(v) + 0.5)  # roundf: halves away from zero
            expected = q * d.astype(np.float16).astype(np.float64)
            assert np.array_equal(values.reshape(-1, 32).astype(np.float64), expected.astype(np.float32)), hf


def test_a_config_exports_its_merged_model(tiny_gqa, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "t").symlink_to(tiny_gqa, target_is_directory=True)  # stands for herd merge's output
    config = tmp_path / "c.yaml"
    config.write_text(f"""model_name: t
base_model: {tiny_gqa}
data: {{type: vicuna, dataset: {tmp_path}}}
lora: {{r: 4, lora_alpha: 8, target_modules: [q_proj], lora_dropout: 0.0, bias: none, task_type: CAUSAL_LM}}
trainer: {{batch_size: 1, gradient_accumulation_steps: 1, warmup_steps: 0, num_train_epochs: 1,
          learning_rate: 0.001, logging_steps: 1}}
trainer_output_dir: {tmp_path}/trainer
model_output_dir: {models}
""")
    out = herd("export", "gguf", config, "--type", "q8_0")
    assert f"herd export gguf: wrote {models / 't-q8_0.gguf'}: " in out.stdout
    assert field(gguf.GGUFReader(str(models / "t-q8_0.gguf")), "general.name") == "t"
