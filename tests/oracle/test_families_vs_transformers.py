"""herd's model on the other families herd trains against transformers' own classes:
random tiny Qwen2ForCausalLM (q/k/v biases; tied and untied embeddings),
MistralForCausalLM (a sliding window shorter than the rows) and a Llama-3.1-configured
LlamaForCausalLM (llama3 rope scaling, a 128,256-id vocabulary, an eos_token_id list),
each made and saved by transformers and loaded by herd."""
import json

import pytest
import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

from conftest import herd, herd_logits

ROWS = [[1, 17, 42, 99, 250, 3, 7, 511, 64, 12], [1, 300, 5, 77]]
SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=128, rms_norm_eps=1e-5)


def qwen2(tied):
    return Qwen2ForCausalLM, Qwen2Config(vocab_size=512, rope_theta=1000000.0, tie_word_embeddings=tied,
                                         use_sliding_window=False, **SHAPE)


def mistral(window):
    return MistralForCausalLM, MistralConfig(vocab_size=512, sliding_window=window, **SHAPE)


def llama31():
    return LlamaForCausalLM, LlamaConfig(
        vocab_size=128256, bos_token_id=128000, eos_token_id=[128001, 128008, 128009], rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8}, **SHAPE)


FAMILIES = {"qwen2-tied": lambda: qwen2(True), "qwen2-untied": lambda: qwen2(False), "mistral-window-4": lambda: mistral(4),
            "llama-3.1": llama31}


def save_random(kind, path, seed=0):
    """A transformers model of `kind`, random, its biases too (transformers starts them at 0)."""
    cls, config = FAMILIES[kind]()
    torch.manual_seed(seed)
    model = cls(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.5)
    model.save_pretrained(str(path), safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {kind: save_random(kind, root / kind) for kind in FAMILIES}


def hf_logits(kind, model_dir, ids, mask=None):
    cls, _ = FAMILIES[kind]()
    model = cls.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_logits_match_transformers(models, kind):
    logits, ids, mask = herd_logits(models[kind], ROWS, "--no-quantize")
    expected = hf_logits(kind, models[kind], ids, mask)
    m = mask.bool()
    assert (logits[m] - expected[m]).abs().max().item() < 1e-4, kind
    one, ids1, _ = herd_logits(models[kind], ROWS[:1], "--no-quantize")  # no padding: the unmasked path
    assert (one - hf_logits(kind, models[kind], ids1)).abs().max().item() < 1e-4, kind


def test_the_window_and_the_biases_change_the_logits(models, tmp_path):
    """The comparisons can fail: without the window, or without the biases, the logits part."""
    wide = tmp_path / "wide"
    save_random("mistral-window-4", wide)
    config = json.loads((wide / "config.json").read_text())
    config["sliding_window"] = None
    (wide / "config.json").write_text(json.dumps(config))
    windowed, ids, mask = herd_logits(models["mistral-window-4"], ROWS[:1], "--no-quantize")
    unwindowed, _, _ = herd_logits(wide, ROWS[:1], "--no-quantize")
    assert (windowed[0, :4] - unwindowed[0, :4]).abs().max() < 1e-5  # the first 4 positions see the same keys
    assert (windowed[0, 4:] - unwindowed[0, 4:]).abs().max() > 1e-3
    from safetensors.torch import load_file, save_file
    zero = tmp_path / "zero-bias"
    save_random("qwen2-untied", zero)
    tensors = load_file(str(zero / "model.safetensors"))
    tensors = {k: (torch.zeros_like(v) if k.endswith(".bias") else v) for k, v in tensors.items()}
    save_file(tensors, str(zero / "model.safetensors"), metadata={"format": "pt"})
    with_bias, _, _ = herd_logits(models["qwen2-untied"], ROWS[:1], "--no-quantize")
    without, _, _ = herd_logits(zero, ROWS[:1], "--no-quantize")
    assert (with_bias - without).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["qwen2-untied", "mistral-window-4"])
def test_nf4_checkpoint_loads_in_transformers_and_gives_herds_logits(models, tmp_path, kind):
    """herd quantize's checkpoint of each family: transformers (bitsandbytes' CPU backend)
    loads it and agrees with herd to the 1% of the Llama test."""
    quantized = tmp_path / "nf4"
    herd("quantize", models[kind], quantized)
    cls, _ = FAMILIES[kind]()
    model = cls.from_pretrained(str(quantized), device_map="cpu", dtype=torch.float32).eval()
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    rows = [[1, 17, 42, 99, 250, 3, 7, 8, 9]]
    ours, ids, _ = herd_logits(quantized, rows, "--compute-dtype", "bfloat16")
    with torch.no_grad():
        theirs = model(input_ids=ids).logits
    assert (ours - theirs).abs().max().item() < 0.02 * theirs.abs().max().item()
    on_load, _, _ = herd_logits(models[kind], rows, "--compute-dtype", "bfloat16")
    assert (ours - on_load).abs().max().item() < 1e-5  # the pre-quantized checkpoint is quantizing on load


def test_an_architecture_herd_does_not_train_is_refused_naming_the_ones_it_does(models, tmp_path):
    other = tmp_path / "gemma"
    save_random("qwen2-tied", other)
    config = json.loads((other / "config.json").read_text())
    config["architectures"] = ["GemmaForCausalLM"]
    (other / "config.json").write_text(json.dumps(config))
    out = herd("tools", "logits", other, "--ids", "1,2,3", "--out", tmp_path / "x.safetensors", check=False)
    assert out.returncode != 0
    assert "architectures: 'GemmaForCausalLM' is not an architecture herd trains" in out.stderr
    assert "LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM" in out.stderr


LINES = ["The model trains on every sample.", "", "A worker reads the data and writes the checkpoint 12345.",
         "### HUMAN:", "Ünïcödé naïve 日本語のテキスト", "x"]


def with_byte_level_vocabulary(kind, path):
    """`kind`'s model (random, as above) over a byte-level vocabulary the tokenizers library
    trained: Qwen2's pattern and no BOS for Qwen2, Llama-3's with a BOS for Mistral."""
    from tokenizers import Tokenizer
    from conftest import LLAMA3_SPLIT, QWEN2_SPLIT, byte_level_tokenizer
    if kind.startswith("qwen2"):
        byte_level_tokenizer(path, QWEN2_SPLIT, None, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None,
                             "<|endoftext|>", False, vocab=512)
    else:
        byte_level_tokenizer(path, LLAMA3_SPLIT, None, ["<s>", "</s>"], "<s>", "</s>", True, vocab=512)
    assert Tokenizer.from_file(str(path / "tokenizer.json")).get_vocab_size() <= 512  # the model's, padded as Qwen's are
    cls, config = FAMILIES[kind]()
    torch.manual_seed(1)
    cls(config).save_pretrained(str(path))
    return path


def reference_loss(model_dir, model):
    """Mean next-token loss over LINES as transformers computes it, ids from the tokenizers library."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    total, count = 0.0, 0
    for line in LINES:
        ids = tok.encode(line).ids if line else []
        if len(ids) < 2:
            continue
        t = torch.tensor([ids])
        with torch.no_grad():
            total += model(input_ids=t, labels=t).loss.item() * (len(ids) - 1)
        count += len(ids) - 1
    return total / count, count


@pytest.mark.parametrize("kind", ["qwen2-untied", "mistral-window-4"])
def test_a_trained_adapter_loads_in_peft_gives_herds_eval_loss_and_merges_as_peft_does(tmp_path, kind):
    from peft import PeftModel
    from pathlib import Path
    model = with_byte_level_vocabulary(kind, tmp_path / kind)
    src = Path(__file__).resolve().parents[2]
    config = tmp_path / "c.yaml"
    config.write_text(f"""model_name: t
base_model: {model}
model_context_window: 128
data: {{type: vicuna, dataset: {src / 'data' / 'sample-vicuna.json'}, packing: true}}
lora: {{r: 4, lora_alpha: 8, target_modules: [q_proj, k_proj, v_proj, down_proj], lora_dropout: 0.05, bias: none,
       task_type: CAUSAL_LM}}
trainer: {{device: cpu, batch_size: 2, gradient_accumulation_steps: 2, warmup_steps: 2, num_train_epochs: 1, max_steps: 8,
          learning_rate: 0.01, logging_steps: 4}}
trainer_output_dir: {tmp_path}/trainer
model_output_dir: {tmp_path}/models
quantization: {{enabled: true, compute_dtype: float32}}
metrics: {{enabled: false}}
""")
    herd("train", config)
    adapter = tmp_path / "models" / "t_adapter"
    data = tmp_path / "lines.txt"
    data.write_text("\n".join(LINES) + "\n")
    cls, _ = FAMILIES[kind]()
    base = cls.from_pretrained(str(model), dtype=torch.float32).eval()
    plain, _ = reference_loss(model, base)
    tuned = PeftModel.from_pretrained(base, str(adapter)).eval()
    expected, tokens = reference_loss(model, tuned)
    got = json.loads(herd("eval", model, "--data", data, "--no-quantize", "--adapter", adapter, "--json").stdout)
    assert got["tokens"] == tokens
    assert abs(got["loss"] - expected) < 1e-5
    assert abs(expected - plain) > 1e-3  # training moved the adapter off its zero start

    merged = tmp_path / "merged"
    herd("merge", "--base", model, "--adapter", adapter, "--out", merged, "--dtype", "float32")
    ids = torch.tensor([[5, 17, 42, 99, 250, 3, 7, 8, 9, 10]])
    with torch.no_grad():
        theirs = tuned.merge_and_unload()(input_ids=ids).logits
        ours = cls.from_pretrained(str(merged), dtype=torch.float32).eval()(input_ids=ids).logits
    assert (ours - theirs).abs().max().item() < 1e-4


def test_config_check_reports_the_family_and_tokenizer_and_refuses_what_herd_cannot_train(tmp_path):
    model = with_byte_level_vocabulary("qwen2-untied", tmp_path / "qwen")
    config = tmp_path / "c.yaml"

    def check(extra=""):
        config.write_text(f"""model_name: t
base_model: {model}
{extra}data: {{type: vicuna, dataset: {tmp_path / 'd.json'}}}
lora: {{r: 4, lora_alpha: 8, target_modules: [q_proj, v_proj], lora_dropout: 0.05, bias: none, task_type: CAUSAL_LM}}
trainer: {{batch_size: 1, gradient_accumulation_steps: 1, warmup_steps: 1, num_train_epochs: 1, learning_rate: 0.01,
          logging_steps: 1}}
trainer_output_dir: {tmp_path}/trainer
model_output_dir: {tmp_path}/models
""")
        return herd("config", "check", config, "--json", check=False)

    out = check()
    assert out.returncode == 0, out.stderr
    from tokenizers import Tokenizer
    assert json.loads(out.stdout)["model"] == {
        "dir": str(model), "family": "qwen2", "architecture": "Qwen2ForCausalLM", "vocab_size": 512,
        "tokenizer": {"file": str(model / "tokenizer.json"), "kind": "byte-level BPE",
                      "vocab_size": Tokenizer.from_file(str(model / "tokenizer.json")).get_vocab_size()},
        "chat_template": None}  # data.prompt_style seed: no template read
    out = check("model_family: llama\n")
    assert out.returncode != 0 and "model_family: llama (the seed's Llama classes), but" in out.stderr
    assert "is a Qwen2ForCausalLM; leave model_family out" in out.stderr
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "architectures": ["Phi3ForCausalLM"]}))
    out = check()
    assert out.returncode != 0
    assert ("config.json: architectures: 'Phi3ForCausalLM' is not an architecture herd trains (LlamaForCausalLM, "
            "Qwen2ForCausalLM, MistralForCausalLM)") in out.stderr
