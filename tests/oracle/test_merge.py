"""`herd merge`: every merged tensor is W + scaling * B @ A (numpy, float64) within the output dtype's
rounding; a 2 GB model merges in about one tensor of memory (the process's peak resident set, VmHWM
of /proc/PID/status); transformers loads the merged directory and its logits are those of
transformers + peft's merge_and_unload; a 4-bit base is dequantized as bitsandbytes decodes it; a
mismatched adapter is refused before anything is written."""
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

from conftest import BIN, herd
from test_make_model import tensors, weight as nf4_weight

MODULES = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
           "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def shape(cfg, module):
    h, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    d = cfg.get("head_dim", h // heads)
    q, kv, inter = heads * d, cfg.get("num_key_value_heads", heads) * d, cfg["intermediate_size"]
    return {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q), "gate_proj": (inter, h),
            "up_proj": (inter, h), "down_proj": (h, inter)}[module]


def write_adapter(path, base, r=8, alpha=32, targets=("q_proj", "k_proj", "v_proj"), seed=0, std=0.05):
    """A peft LoRA adapter with random A and B (training would have moved B off zero)."""
    cfg = json.loads((base / "config.json").read_text())
    g = torch.Generator().manual_seed(seed)
    t = {}
    for i in range(cfg["num_hidden_layers"]):
        for m in targets:
            out, inp = shape(cfg, m)
            prefix = f"base_model.model.model.layers.{i}.{MODULES[m]}.{m}"
            t[prefix + ".lora_A.weight"] = torch.randn(r, inp, generator=g) * std
            t[prefix + ".lora_B.weight"] = torch.randn(out, r, generator=g) * std
    path.mkdir(parents=True)
    save_file(t, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
        "target_modules": list(targets), "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "base_model_name_or_path": str(base), "inference_mode": True}))
    return t, alpha / r


def merge(*args):
    """herd merge ... --json: its report."""
    return json.loads(herd("merge", *args, "--json").stdout)


def expected(base_w, a, b, scaling):
    """W + scaling * B @ A in float64."""
    return base_w.double().numpy() + scaling * (b.double().numpy() @ a.double().numpy())


def assert_within_rounding(got, want, dtype):
    """got (the merged tensor, in `dtype`) is float64 `want` rounded once to dtype."""
    eps = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11, torch.float32: 2.0 ** -24}[dtype]
    assert got.dtype == dtype
    err = np.abs(got.double().numpy() - want)
    # float32 arithmetic on the way (the product, the sum) costs a few more ulps than one rounding
    assert (err <= np.abs(want) * eps * 1.01 + 1e-6 * np.abs(want).max()).all(), err.max()


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """llama-2-7b's shape cut to 4 layers, bfloat16: 2.1 GB."""
    d = tmp_path_factory.mktemp("big")
    herd("tools", "make-model", d / "base", "--shape", "llama-2-7b", "--layers", "4")
    return d


def test_a_2gb_model_merges_within_one_gib_and_a_tensor(big):
    base = big / "base"
    size = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    assert size >= 2e9
    lora, scaling = write_adapter(big / "adapter", base)
    p = subprocess.Popen([str(BIN / "herd"), "merge", "--base", base, "--adapter", big / "adapter", "--out",
                          big / "merged", "--shard-size", "1GB", "--json"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    polled = 0  # the peak resident set (VmHWM) /proc shows for the process while it runs
    while p.poll() is None:
        try:
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    polled = max(polled, int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError):
            pass
        time.sleep(0.05)
    out, err = p.communicate()
    assert p.returncode == 0, err
    report = json.loads(out)
    peak = report["peak_rss_bytes"]  # VmHWM as herd reads it at the end
    largest = report["largest_tensor_bytes"]
    print(f"merged {size / 1e9:.2f} GB ({report['tensors']} tensors, largest {largest / 2 ** 20:.0f} MiB) in "
          f"{report['seconds']:.1f} s; peak resident {peak / 2 ** 20:.0f} MiB ({polled / 2 ** 20:.0f} MiB seen "
          f"while it ran)")
    assert largest == 32000 * 4096 * 2  # the embedding, bfloat16
    assert peak <= 2 ** 30 + largest, peak
    assert peak / 2 <= polled <= peak + (1 << 20)

    merged = big / "merged"
    assert report["dtype"] == "bfloat16" and report["merged"] == 12 and report["tensors"] == 3 + 4 * 9
    index = json.loads((merged / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == 3 and shards[0] == "model-00001-of-00003.safetensors"
    assert all((merged / s).stat().st_size <= 1e9 + 2 ** 20 for s in shards)
    assert {"config.json", "tokenizer.model"} <= set(report["files"])
    assert json.loads((merged / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert not list(big.glob(".merged.herd-merge*"))  # renamed into place

    got = tensors(merged)
    source = tensors(base)
    assert got.keys() == source.keys()
    for name, w in source.items():
        prefix = "base_model.model." + name[: -len(".weight")]
        if prefix + ".lora_A.weight" in lora:
            assert_within_rounding(got[name], expected(w, lora[prefix + ".lora_A.weight"],
                                                       lora[prefix + ".lora_B.weight"], scaling), torch.bfloat16)
        else:
            assert torch.equal(got[name], w), name


@pytest.fixture(scope="module")
def tiny(tiny_gqa, tmp_path_factory):
    d = tmp_path_factory.mktemp("tinymerge")
    lora, scaling = write_adapter(d / "adapter", tiny_gqa, r=4, alpha=8,
                                  targets=("q_proj", "v_proj", "down_proj"), seed=1, std=0.2)
    return d, lora, scaling


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_transformers_loads_the_merge_and_gives_peft_merge_and_unloads_logits(tiny_gqa, tiny, dtype):
    d, lora, scaling = tiny
    out = d / f"merged-{dtype}"
    report = merge("--base", tiny_gqa, "--adapter", d / "adapter", "--out", out, "--dtype", dtype)
    assert report["merged"] == 2 * 3 and report["dtype"] == dtype
    torch_dtype = getattr(torch, dtype)
    base = LlamaForCausalLM.from_pretrained(str(tiny_gqa), torch_dtype=torch.float32).eval()
    reference = PeftModel.from_pretrained(base, str(d / "adapter")).merge_and_unload().to(torch_dtype).eval()
    ours = LlamaForCausalLM.from_pretrained(str(out), torch_dtype=torch_dtype).eval()
    ids = torch.tensor([[1, 5, 9, 33, 70, 2, 17, 4]])
    with torch.no_grad():
        a, b = ours(ids).logits.float(), reference(ids).logits.float()
    tol = 1e-5 if dtype == "float32" else 3e-2
    assert (a - b).abs().max().item() <= tol * b.abs().max().item(), (a - b).abs().max().item()
    # every weight is peft's merge to within one rounding
    theirs = reference.state_dict()
    for name, t in tensors(out).items():
        assert (t.float() - theirs[name].float()).abs().max().item() <= 2 * t.float().abs().max().item() * (
            2 ** -8 if dtype == "bfloat16" else 1e-6), name


def test_merge_config_takes_the_seeds_paths(tiny_gqa, tiny, tmp_path):
    """herd merge CONFIG: base_model, {model_output_dir}/{model_name}_adapter -> {model_output_dir}/{model_name}."""
    d, _, _ = tiny
    models = tmp_path / "models"
    models.mkdir()
    (models / "t_adapter").symlink_to(d / "adapter", target_is_directory=True)
    config = tmp_path / "c.yaml"
    config.write_text(f"""model_name: t
base_model: {tiny_gqa}
data: {{type: vicuna, dataset: {Path(__file__).resolve().parents[2] / 'data' / 'sample-vicuna.json'}}}
lora: {{r: 4, lora_alpha: 8, target_modules: [q_proj, v_proj, down_proj], lora_dropout: 0.0, bias: none,
       task_type: CAUSAL_LM}}
trainer: {{batch_size: 1, gradient_accumulation_steps: 1, warmup_steps: 0, num_train_epochs: 1,
          learning_rate: 0.001, logging_steps: 1}}
trainer_output_dir: {tmp_path}/trainer
model_output_dir: {models}
""")
    out = herd("merge", config)
    assert f"herd merge: wrote {models / 't'}: " in out.stdout
    assert (models / "t" / "model.safetensors").exists()
    again = herd("merge", config, check=False)
    assert again.returncode == 1 and f"{models / 't'} exists: remove it" in again.stderr


def test_a_4bit_base_is_dequantized_as_bitsandbytes_decodes_it(tiny_gqa, tiny, tmp_path):
    d, lora, scaling = tiny
    herd("quantize", tiny_gqa, tmp_path / "nf4")
    p = subprocess.run([str(BIN / "herd"), "merge", "--base", tmp_path / "nf4", "--adapter", d / "adapter", "--out",
                        tmp_path / "merged"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "the base is 4-bit (NF4)" in p.stdout
    quantized = tensors(tmp_path / "nf4")
    got = tensors(tmp_path / "merged")
    assert not any(k.endswith((".absmax", ".quant_map")) or ".quant_state." in k for k in got)
    cfg = json.loads((tiny_gqa / "config.json").read_text())
    for name, t in got.items():
        if name + ".quant_state.bitsandbytes__nf4" not in quantized:
            assert torch.equal(t, quantized[name]), name
            continue
        module = name.split(".")[-2]
        state = json.loads(bytes(quantized[name + ".quant_state.bitsandbytes__nf4"].tolist()))
        # decoded as bitsandbytes decodes it, in the dtype its quant_state names
        w = nf4_weight(quantized, name)[0].reshape(shape(cfg, module)).to(getattr(torch, state["dtype"]))
        prefix = "base_model.model." + name[: -len(".weight")]
        if prefix + ".lora_A.weight" in lora:
            want = expected(w, lora[prefix + ".lora_A.weight"], lora[prefix + ".lora_B.weight"], scaling)
        else:
            want = w.double().numpy()
        assert_within_rounding(t, want, got["model.embed_tokens.weight"].dtype)  # the base's dtype


@pytest.mark.parametrize("broken,message", [
    ("rank", "lora_A.weight' is F32 [4, 64]; the base ("),
    ("module", "tensor 'base_model.model.model.layers.0.mlp.up_proj.lora_A.weight' is missing"),
    ("extra", "matches no module of the base model"),
])
def test_a_mismatched_adapter_is_refused_before_anything_is_written(tiny_gqa, tmp_path, broken, message):
    t, _ = write_adapter(tmp_path / "a", tiny_gqa, r=4, alpha=8, targets=("q_proj", "v_proj"))
    cfg_file = tmp_path / "a" / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    if broken == "rank":
        cfg["r"] = 2
    elif broken == "module":
        cfg["target_modules"] = ["q_proj", "v_proj", "up_proj"]
    else:
        t["base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight"] = torch.zeros(4, 64)
        save_file(t, str(tmp_path / "a" / "adapter_model.safetensors"))
    cfg_file.write_text(json.dumps(cfg))
    p = subprocess.run([str(BIN / "herd"), "merge", "--base", tiny_gqa, "--adapter", tmp_path / "a", "--out",
                        tmp_path / "out"], capture_output=True, text=True)
    assert p.returncode == 1
    assert message in p.stderr, p.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def write_dora_adapter(path, base, targets=("q_proj", "v_proj", "down_proj")):
    """A peft DoRA adapter with random A and B and magnitudes away from ||W + s B A||, as training
    leaves them; the peft model too."""
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(LlamaForCausalLM.from_pretrained(str(base), torch_dtype=torch.float32), LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM", target_modules=list(targets), use_dora=True,
        init_lora_weights=False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(torch.linspace(0.5, 1.5, p.numel()))
    model.save_pretrained(str(path))
    return model


def test_a_dora_adapter_merges_as_peft_merge_and_unload(tiny_gqa, tmp_path):
    """DoRA: each row of W + s B A rescaled to m / its norm."""
    model = write_dora_adapter(tmp_path / "adapter", tiny_gqa)
    report = merge("--base", tiny_gqa, "--adapter", tmp_path / "adapter", "--out", tmp_path / "merged", "--dtype",
                   "float32")
    assert report["merged"] == 2 * 3
    theirs = model.merge_and_unload().state_dict()
    source = tensors(tiny_gqa)
    changed = 0
    for name, t in tensors(tmp_path / "merged").items():
        assert (t - theirs[name]).abs().max().item() <= 1e-6 * theirs[name].abs().max().item(), name
        changed += not torch.equal(t, source[name])
    assert changed == 2 * 3
