"""herd's NF4 against bitsandbytes (its CPU backend from PyPI): the bytes of
`herd quantize`, dequantized values, and transformers loading herd's checkpoint.

Where bitsandbytes' CPU backend departs from its CUDA kernels (which the seed's run
used), herd follows CUDA, and these tests say so:
- an all-zero block: CUDA packs 0x00 (0 * inf is NaN, above no threshold); the CPU
  backend may write 0x77;
- a weight whose rows are not a multiple of 64 long: blocks run over the flattened
  weight (CUDA); the CPU backend's dequantize_4bit decodes such weights differently,
  and its CPU matmul path refuses them.
"""
import json

import bitsandbytes.functional as F
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from conftest import herd, herd_logits

LINEAR = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
          "mlp.up_proj", "mlp.down_proj"]


@pytest.fixture(scope="module")
def quantized(tiny_gqa, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "tiny-nf4"
    herd("quantize", tiny_gqa, out)
    return out


def names(layers=2):
    return [f"model.layers.{i}.{m}.weight" for i in range(layers) for m in LINEAR]


def quant_state(q, name):
    return json.loads(bytes(q[name + ".quant_state.bitsandbytes__nf4"].tolist()))


def test_bytes_match_bitsandbytes(tiny_gqa, quantized):
    orig = load_file(str(tiny_gqa / "model.safetensors"))
    q = load_file(str(quantized / "model.safetensors"))
    for name in names():
        packed, st = F.quantize_4bit(orig[name], blocksize=64, quant_type="nf4", compress_statistics=True)
        assert torch.equal(q[name], packed), name                        # uint8 [n/2, 1], high nibble first
        # 8-bit codes of the absmax: equal, except that an offset differing in its last
        # bit (below) can move a value that sits on a midpoint to the neighbouring code.
        diff = (q[name + ".absmax"].int() - st.absmax.int()).abs()
        assert diff.max() <= 1 and diff.sum() <= max(1, diff.numel() // 100), name
        assert torch.equal(q[name + ".quant_map"], st.code), name
        assert torch.equal(q[name + ".nested_quant_map"], st.state2.code), name
        state = quant_state(q, name)
        assert state["shape"] == list(orig[name].shape) and state["blocksize"] == 64 and state["quant_type"] == "nf4"
        # The offset is the float32 mean of the absmax. herd sums exactly and rounds
        # once; torch's mean (bitsandbytes) sums in float32 in an order of its own,
        # so the two may differ in the last bits, and nested_absmax with them.
        assert state["nested_offset"] == pytest.approx(st.offset.item(), rel=1e-6)
        torch.testing.assert_close(q[name + ".nested_absmax"], st.state2.absmax, rtol=1e-5, atol=0)


def test_without_double_quant_absmax_is_bit_identical(tiny_gqa, tmp_path):
    out = tmp_path / "single"
    herd("quantize", tiny_gqa, out, "--no-double-quant")
    orig, q = load_file(str(tiny_gqa / "model.safetensors")), load_file(str(out / "model.safetensors"))
    for name in names():
        packed, st = F.quantize_4bit(orig[name], blocksize=64, quant_type="nf4", compress_statistics=False)
        assert torch.equal(q[name], packed) and torch.equal(q[name + ".absmax"], st.absmax), name


def decode(packed, code, absmax, shape):
    """NF4 as the CUDA kernel decodes it: blocks of 64 over the flattened weight."""
    p = packed.flatten().long()
    codes = torch.stack([p >> 4, p & 15], 1).flatten()[: shape[0] * shape[1]]
    return (code[codes] * absmax.float().repeat_interleave(64)[: codes.numel()]).view(shape)


def test_dequantized_weights_match(tiny_gqa, quantized):
    orig = load_file(str(tiny_gqa / "model.safetensors"))
    q = load_file(str(quantized / "model.safetensors"))
    for name in names():
        packed, st = F.quantize_4bit(orig[name], blocksize=64, quant_type="nf4", compress_statistics=False)
        expected = decode(packed, st.code, st.absmax, orig[name].shape)
        if orig[name].shape[1] % 64 == 0:  # there the CPU backend's own dequantize agrees
            torch.testing.assert_close(F.dequantize_4bit(packed, st), expected, rtol=0, atol=0)
        # herd's stored form (double-quantized absmax), decoded as documented: the
        # absmax codes differ at most by one step (see above), so compare to 1%.
        nested = q[name + ".nested_absmax"].repeat_interleave(256)[: q[name + ".absmax"].numel()]
        absmax = q[name + ".nested_quant_map"][q[name + ".absmax"].long()] * nested + quant_state(q, name)["nested_offset"]
        got = decode(q[name], q[name + ".quant_map"], absmax, orig[name].shape)
        torch.testing.assert_close(got, expected, rtol=0.01, atol=1e-6)
        # and the error against the original is NF4's: at most half the widest code gap
        assert (got - orig[name]).abs().max() < 0.16 * orig[name].abs().max()


def test_zero_block_follows_the_cuda_kernel(tmp_path):
    """bitsandbytes' CUDA kernel packs an all-zero block to 0x00 bytes (0 * inf is
    NaN, which is above no threshold); its CPU backend writes 0x77. herd follows CUDA."""
    tiny = tmp_path / "m"
    from conftest import make_tiny_model
    make_tiny_model(tiny, "--seed", "6")
    tensors = load_file(str(tiny / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    tensors[name][0, :] = 0  # the first block of 64
    save_file(tensors, str(tiny / "model.safetensors"), metadata={"format": "pt"})
    herd("quantize", tiny, tmp_path / "q", "--no-double-quant")
    ours = load_file(str(tmp_path / "q" / "model.safetensors"))[name].flatten()
    assert ours[:32].unique().tolist() == [0x00]
    packed, st = F.quantize_4bit(tensors[name], blocksize=64, quant_type="nf4", compress_statistics=False)
    assert st.absmax[0] == 0
    assert packed.flatten()[:32].unique().tolist() == [0x77]  # the CPU backend's choice, recorded
    assert torch.equal(ours[32:], packed.flatten()[32:])  # every other block agrees


def test_prequantized_checkpoint_gives_the_same_logits_as_quantizing_on_load(tiny_gqa, quantized):
    rows = [[1, 17, 42, 99, 250, 3, 7], [1, 300, 5]]
    on_load, _, mask = herd_logits(tiny_gqa, rows)
    from_disk, _, _ = herd_logits(quantized, rows)
    assert torch.equal(on_load, from_disk)
    plain, _, _ = herd_logits(tiny_gqa, rows, "--no-quantize")
    assert (on_load - plain)[mask.bool()].abs().max() > 1e-4  # NF4 really is in the path


def test_transformers_loads_herds_checkpoint(tmp_path):
    # Rows a multiple of 64 long: bitsandbytes' CPU matmul needs that.
    from conftest import make_tiny_model
    tiny = make_tiny_model(tmp_path / "tiny", "--hidden", "64", "--intermediate", "128", "--seed", "4")
    quantized = tmp_path / "tiny-nf4"
    herd("quantize", tiny, quantized)
    model = LlamaForCausalLM.from_pretrained(str(quantized), device_map="cpu", dtype=torch.float32).eval()
    layer = model.model.layers[0].mlp.gate_proj
    assert type(layer).__name__ == "Linear4bit"
    assert layer.weight.quant_state.nested and layer.weight.quant_state.quant_type == "nf4"
    rows = [[1, 17, 42, 99, 250, 3, 7]]
    ours, ids, _ = herd_logits(quantized, rows, "--compute-dtype", "bfloat16")
    with torch.no_grad():
        theirs = model(input_ids=ids).logits
    # bitsandbytes' CPU path runs its 4-bit matmuls in bfloat16 with its own
    # rounding; the logits agree to about 1% of their scale.
    scale = theirs.abs().max().item()
    assert (ours - theirs).abs().max().item() < 0.02 * scale
