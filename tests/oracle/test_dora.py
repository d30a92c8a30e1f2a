"""DoRA (lora.use_dora) and LoRA+ (lora.loraplus_lr_ratio) against peft + transformers on
tiny random models, over a dense float32 base and over the NF4 base (peft gets herd's
dequantized weights: bitsandbytes has no CPU 4-bit path to compare with): one forward's
logits, one backward's gradients of A, B and the magnitude, several optimizer steps'
losses (peft's create_loraplus_optimizer for LoRA+), and adapters both ways."""
import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from peft.optimizers import create_loraplus_optimizer
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from conftest import herd, herd_logits

TARGETS = ["q_proj", "v_proj", "down_proj"]
R, ALPHA = 4, 8


def rows_arg(ids):
    return ";".join(",".join(map(str, r)) for r in ids.tolist())


def random_ids(model_dir, shape, seed=0):
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def herd_step(model_dir, adapter, ids, out, quantize):
    """herd tools grads: the loss, the adapter's gradients and the (dequantized) base weights."""
    herd("tools", "grads", model_dir, "--adapter", adapter, "--ids", rows_arg(ids), "--out", out,
         "--compute-dtype", "float32", *([] if quantize else ["--no-quantize"]))
    return load_file(str(out))


def base_with(model_dir, weights):
    """transformers' model of the directory with the decoder's linear weights replaced by `weights`."""
    model = LlamaForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32)
    state = model.state_dict()
    for name, t in weights.items():
        state[name].copy_(t)
    return model


def peft_name(name):
    """peft's parameter name -> the adapter file's (herd's) name."""
    return name.replace(".default.weight", "") if "lora_magnitude_vector" in name else name.replace(".default", "")


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("quantize", [False, True])
def test_dora_logits_and_gradients_equal_peft(tiny_gqa, tmp_path, quantize):
    adapter = tmp_path / "adapter"
    herd("tools", "init-adapter", tiny_gqa, adapter, "--r", R, "--alpha", ALPHA, "--targets", ",".join(TARGETS),
         "--dora", "--random-b", "--seed", 3)
    assert json.loads((adapter / "adapter_config.json").read_text())["use_dora"] is True
    ids = random_ids(tiny_gqa, (2, 24))
    got = herd_step(tiny_gqa, adapter, ids, tmp_path / "grads.safetensors", quantize)
    weights = {k: v for k, v in got.items() if k.startswith("model.layers.")}

    model = PeftModel.from_pretrained(base_with(tiny_gqa, weights), str(adapter), is_trainable=True)
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {peft_name(n): p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert len(grads) == 2 * 3 * len(TARGETS)  # A, B and the magnitude of 3 modules on 2 layers
    assert abs(got["loss"].item() - loss.item()) / loss.item() < 1e-5
    for name, g in grads.items():
        assert rel(got[name + ".grad"], g) < 1e-4, name
        assert g.norm() > 0, name

    flags = ["--compute-dtype", "float32", *([] if quantize else ["--no-quantize"])]
    logits, ids2, mask = herd_logits(tiny_gqa, ids.tolist(), *flags, "--adapter", adapter)
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids2, attention_mask=mask).logits
        with model.disable_adapter():
            without = model(input_ids=ids2, attention_mask=mask).logits
    assert (logits - expected).abs().max() < 1e-4
    assert (expected - without).abs().max() > 1e-3  # the adapter changes the outputs


def test_a_peft_dora_adapter_loads_in_herd(tiny_gqa, tmp_path):
    base = LlamaForCausalLM.from_pretrained(str(tiny_gqa), torch_dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, task_type="CAUSAL_LM",
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                            "down_proj"], use_dora=True, init_lora_weights=False))
    with torch.no_grad():  # a magnitude away from ||W + s B A||, as training leaves it
        for name, p in model.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(torch.linspace(0.6, 1.4, p.numel()))
    model.eval()
    model.save_pretrained(str(tmp_path / "peft"))
    ids = random_ids(tiny_gqa, (2, 12), seed=1)
    logits, ids2, mask = herd_logits(tiny_gqa, ids.tolist(), "--no-quantize", "--compute-dtype", "float32",
                                     "--adapter", tmp_path / "peft")
    with torch.no_grad():
        expected = model(input_ids=ids2, attention_mask=mask).logits
    assert (logits - expected).abs().max() < 1e-4


def test_an_embedding_target_is_refused_by_name(tiny_gqa, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(training_config(tiny_gqa, tmp_path, tmp_path / "none.json", dora=True, ratio=0, quantize=False)
                      .replace("[q_proj, v_proj, down_proj]", "[q_proj, embed_tokens]"))
    out = herd("train", config, check=False)
    assert out.returncode != 0
    assert "lora.target_modules: 'embed_tokens': herd adapts the decoder's linear layers only" in out.stderr


def training_config(model_dir, tmp_path, data, dora, ratio, quantize, steps=6):
    extra = (", use_dora: true" if dora else "") + (f", loraplus_lr_ratio: {ratio}" if ratio else "")
    return f"""model_name: t
base_model: {model_dir}
model_context_window: 40
data: {{type: vicuna, dataset: {data}}}
lora: {{r: {R}, lora_alpha: {ALPHA}, target_modules: [{', '.join(TARGETS)}], lora_dropout: 0.0, bias: none,
       task_type: CAUSAL_LM{extra}}}
trainer: {{device: cpu, batch_size: 2, gradient_accumulation_steps: 1, warmup_steps: 0, num_train_epochs: 1,
          max_steps: {steps}, learning_rate: 0.004, logging_steps: 1, lr_scheduler: constant, weight_decay: 0.01,
          max_grad_norm: 1.0, seed: 11}}
trainer_output_dir: {tmp_path}/trainer
model_output_dir: {tmp_path}/models
quantization: {{enabled: {'true' if quantize else 'false'}, compute_dtype: float32}}
metrics: {{enabled: false}}
"""


@pytest.mark.parametrize("dora,ratio,quantize", [(True, 0, False), (True, 0, True), (False, 16, False),
                                                 (True, 16, True)])
def test_optimizer_steps_equal_peft(tiny_gqa, tmp_path, dora, ratio, quantize):
    """Every sample is the same conversation, so every batch is the same on both sides; both
    start from herd's initial A (B = 0; peft initialises DoRA's magnitude itself)."""
    conversation = {"id": "c", "conversations": [
        {"from": "human", "value": "How many legs does a spider have, and why does it matter?"},
        {"from": "gpt", "value": "Eight. Spiders are arachnids, not insects, which have six legs."}]}
    data = tmp_path / "data.json"
    data.write_text(json.dumps([dict(conversation, id=str(i)) for i in range(16)]))
    config = tmp_path / "c.yaml"
    config.write_text(training_config(tiny_gqa, tmp_path, data, dora, ratio, quantize))
    herd("train", config)
    events = [json.loads(line) for line in (tmp_path / "trainer" / "events.jsonl").read_text().splitlines()]
    herd_losses = [e["loss"] for e in events if e["event"] == "step"]

    sample = json.loads(herd("data", "inspect", config, "--json").stdout)[0]
    assert sample["loss_mask"] == [0] + [1] * (len(sample["token_ids"]) - 1)  # every token but the first, as labels=ids
    ids = torch.tensor([sample["token_ids"]] * 2)
    start = tmp_path / "start"
    herd("tools", "init-adapter", tiny_gqa, start, "--r", R, "--alpha", ALPHA, "--targets", ",".join(TARGETS),
         "--seed", 11)
    weights = herd_step(tiny_gqa, start, ids, tmp_path / "w.safetensors", quantize)
    weights = {k: v for k, v in weights.items() if k.startswith("model.layers.")}
    model = get_peft_model(base_with(tiny_gqa, weights), LoraConfig(
        r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM", use_dora=dora))
    set_peft_model_state_dict(model, load_file(str(start / "adapter_model.safetensors")))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if ratio:
        opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=0.004, loraplus_lr_ratio=ratio,
                                        loraplus_weight_decay=0.01)
    else:
        opt = torch.optim.AdamW(params, lr=0.004, weight_decay=0.01)
    losses = []
    for _ in herd_losses:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    print("herd", herd_losses, "\npeft", losses)
    assert len(herd_losses) == 6
    for h, p in zip(herd_losses, losses):
        assert abs(h - p) / p < 2e-5, (herd_losses, losses)
    assert losses[-1] < losses[0] - 0.05  # the steps train
