"""`herd eval` against transformers (+ peft) computing the same mean token loss."""
import json
import math

import sentencepiece as spm
import torch
from peft import PeftModel
from transformers import LlamaForCausalLM

from conftest import herd

LINES = ["The model trains on every sample.", "", "A worker reads the data and writes the checkpoint.",
         "### HUMAN:", "how many steps?</s>", "x"]


def reference_loss(model_dir, model):
    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    total, count = 0.0, 0
    for line in LINES:
        if not line:
            continue
        ids = [1]
        for part in line.split("</s>"):
            ids += sp.encode(part) if part else []
            ids.append(2)
        ids = ids[:-1]
        if len(ids) < 2:
            continue
        t = torch.tensor([ids])
        with torch.no_grad():
            loss = model(input_ids=t, labels=t).loss.item()  # mean over len-1 predictions
        total += loss * (len(ids) - 1)
        count += len(ids) - 1
    return total / count, count


def herd_eval(*args):
    return json.loads(herd("eval", *args, "--json").stdout)


def test_eval_loss_matches_transformers(tiny_gqa, tmp_path):
    data = tmp_path / "lines.txt"
    data.write_text("\n".join(LINES) + "\n")
    base = LlamaForCausalLM.from_pretrained(str(tiny_gqa), torch_dtype=torch.float32).eval()
    expected, tokens = reference_loss(tiny_gqa, base)
    got = herd_eval(tiny_gqa, "--data", data, "--no-quantize")
    assert got["tokens"] == tokens and got["samples"] == 5
    assert abs(got["loss"] - expected) < 1e-5
    assert abs(got["perplexity"] - math.exp(expected)) < 1e-3

    adapter = tmp_path / "adapter"
    herd("tools", "init-adapter", tiny_gqa, adapter, "--r", "4", "--targets", "q_proj,v_proj,down_proj", "--random-b")
    with_adapter = PeftModel.from_pretrained(base, str(adapter)).eval()
    expected_adapter, _ = reference_loss(tiny_gqa, with_adapter)
    got_adapter = herd_eval(tiny_gqa, "--data", data, "--no-quantize", "--adapter", adapter)
    assert abs(got_adapter["loss"] - expected_adapter) < 1e-5
    assert abs(expected_adapter - expected) > 1e-3  # the adapter changes the loss

    # NF4 (as training uses the model): close to the plain weights, not equal.
    nf4 = herd_eval(tiny_gqa, "--data", data)
    assert nf4["quantized"] and 1e-6 < abs(nf4["loss"] - expected) < 0.05
