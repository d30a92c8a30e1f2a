"""`herd tools make-model`: a random model of a published shape that the trainer cannot tell from a
real one quantized. With --nf4 it has the layout `herd quantize` gives a bfloat16 model of the same
shape (checked against bitsandbytes by test_nf4_vs_bitsandbytes.py), NF4 codes and absmax distributed
as quantizing a normal weight of the same standard deviation gives them; its tokenizer has the
shape's vocabulary as SentencePiece (the peer) reads it; and a 70B model comes to about 36 GB (the
depth measured at 1 and 2 layers, extrapolated to 80). tests/integration/test_plan.py trains such
models."""
import json

import pytest
import sentencepiece
import torch
from bitsandbytes.functional import create_dynamic_map
from safetensors import safe_open

from conftest import herd

STD = 0.02  # make-model's default init_std


def tensors(model_dir):
    """name -> tensor over every shard."""
    index = model_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else [
        "model.safetensors"]
    out = {}
    for f in files:
        with safe_open(str(model_dir / f), "pt") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})
    return out


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """llama-2-7b cut to 1 layer: NF4 as made, and bfloat16 as made then `herd quantize`d."""
    d = tmp_path_factory.mktemp("made")
    herd("tools", "make-model", d / "nf4", "--shape", "llama-2-7b", "--layers", "1", "--nf4")
    herd("tools", "make-model", d / "bf16", "--shape", "llama-2-7b", "--layers", "1")
    herd("quantize", d / "bf16", d / "quantized")
    return d


def state(t, name):
    return json.loads(bytes(t[name + ".quant_state.bitsandbytes__nf4"].tolist()))


def absmax(t, name):
    """A weight's absmax per block, its double quantization decoded."""
    codes = t[name + ".absmax"].long()
    nested = t[name + ".nested_absmax"].repeat_interleave(256)[: codes.numel()]
    return create_dynamic_map(signed=True)[codes] * nested + state(t, name)["nested_offset"]


def weight(t, name):
    """An NF4 weight decoded as bitsandbytes' CUDA kernel decodes it, and its codes."""
    p = t[name].flatten().long()
    nibbles = torch.stack([p >> 4, p & 15], 1).flatten()
    return t[name + ".quant_map"][nibbles] * absmax(t, name).repeat_interleave(64), nibbles


def test_the_nf4_model_has_the_layout_of_a_quantized_model(made):
    ours, theirs = tensors(made / "nf4"), tensors(made / "quantized")
    assert ours.keys() == theirs.keys()
    for k in theirs:
        if not k.endswith("bitsandbytes__nf4"):  # JSON text: its length follows the offset's digits
            assert (ours[k].dtype, ours[k].shape) == (theirs[k].dtype, theirs[k].shape), k
        if k.endswith("quant_map"):
            assert torch.equal(ours[k], theirs[k]), k
    name = "model.layers.0.mlp.down_proj.weight"
    assert state(ours, name).keys() == state(theirs, name).keys()
    assert {k: v for k, v in state(ours, name).items() if k != "nested_offset"} == \
        {k: v for k, v in state(theirs, name).items() if k != "nested_offset"}
    config = lambda d: json.loads((d / "config.json").read_text())
    assert config(made / "nf4") == config(made / "quantized")
    assert config(made / "nf4")["max_position_embeddings"] == 4096


def test_the_nf4_weights_are_distributed_as_a_quantized_normal_weight(made):
    ours, theirs = tensors(made / "nf4"), tensors(made / "quantized")
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight"):
        (w, codes), (v, their_codes) = weight(ours, name), weight(theirs, name)
        assert w.std().item() == pytest.approx(v.std().item(), rel=0.05), name
        assert v.std().item() == pytest.approx(STD, rel=0.1), name
        # How often each code occurs, and the blocks' absmax: as quantizing gives them.
        ours_share = torch.bincount(codes, minlength=16).double() / codes.numel()
        theirs_share = torch.bincount(their_codes, minlength=16).double() / their_codes.numel()
        assert (ours_share - theirs_share).abs().max() < 0.005, (name, ours_share, theirs_share)
        a, b = absmax(ours, name), absmax(theirs, name)
        assert a.mean().item() == pytest.approx(b.mean().item(), rel=0.01), name
        assert a.std().item() == pytest.approx(b.std().item(), rel=0.05), name


def test_the_tokenizer_has_the_shapes_vocabulary(made):
    sp = sentencepiece.SentencePieceProcessor(model_file=str(made / "nf4" / "tokenizer.model"))
    assert sp.get_piece_size() == 32000
    ids = sp.encode("### HUMAN:\nWhat does the coordinator do?\n\n### RESPONSE:\nIt checks the data.")
    assert ids and max(ids) < 8000 and sp.decode(ids) == \
        "### HUMAN:\nWhat does the coordinator do?\n\n### RESPONSE:\nIt checks the data."
    assert sp.id_to_piece(31999).startswith("<unused") and sp.is_unused(31999)


def test_a_70b_model_comes_to_about_36_gb(tmp_path):
    size = {}
    for layers in (1, 2):
        out = tmp_path / f"l{layers}"
        herd("tools", "make-model", out, "--shape", "llama-2-70b", "--layers", layers, "--nf4")
        size[layers] = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    per_layer = size[2] - size[1]
    total = size[1] + 79 * per_layer
    print(f"llama-2-70b NF4: {per_layer / 2**20:.1f} MiB a layer, {total / 1e9:.2f} GB in all")
    assert 34e9 < total < 38e9, total


@pytest.mark.parametrize("family,cls,extra", [
    ("llama3", "LlamaForCausalLM", []), ("qwen2", "Qwen2ForCausalLM", []),
    ("mistral", "MistralForCausalLM", ["--sliding-window", "4"])])
def test_tiny_models_of_the_byte_level_families_load_in_transformers(tmp_path, family, cls, extra):
    """make-tiny-model --family: transformers' class for the architecture loads the model and
    gives herd's logits; AutoTokenizer reads its byte-level tokenizer.json (exactly --vocab ids)
    and gives herd's ids."""
    import transformers
    from transformers import AutoTokenizer
    from conftest import herd_logits
    model = tmp_path / family
    herd("tools", "make-tiny-model", model, "--family", family, "--vocab", "600", "--seed", "2", *extra)
    tok = AutoTokenizer.from_pretrained(str(model))
    assert len(tok) == 600
    texts = ["### HUMAN:\nThe model trains on every sample.\n\n", "héllo wörld 12345 it's", "a" + tok.eos_token]
    (tmp_path / "t.json").write_text(json.dumps(texts))
    ours = json.loads(herd("tools", "tokenize", model, "--input", tmp_path / "t.json").stdout)
    assert ours == [tok(t)["input_ids"] for t in texts]
    assert ours[2][-1] == tok.eos_token_id and len(set(ours[0])) > 5
    hf = getattr(transformers, cls).from_pretrained(str(model), dtype=torch.float32).eval()
    rows = [ours[0][:10]]
    logits, ids, _ = herd_logits(model, rows, "--no-quantize")
    with torch.no_grad():
        assert (logits - hf(input_ids=ids).logits).abs().max().item() < 1e-4
