"""llama.cpp itself (llama-cpp-python, built from source by scripts/install-deps and kept in the
virtualenv) loads `herd export gguf`'s file and, from the same prompt tokens, greedily generates the
tokens `herd chat --greedy` does. The model's weights are first rounded to float16, so that the f16
file holds exactly what herd computes with."""
import json
import shutil

import pytest
import torch
from llama_cpp import Llama
from safetensors.torch import load_file, save_file

from conftest import herd, herd_logits, make_tiny_model

EOS = 2


@pytest.fixture(scope="module")
def rounded(tmp_path_factory):
    """The demo's model shape (weights of std 0.1: peaked next-token distributions, few near-ties),
    its weights rounded to float16 and stored as float32."""
    d = tmp_path_factory.mktemp("llamacpp")
    model = make_tiny_model(d / "m", "--layers", "2", "--hidden", "64", "--heads", "4", "--kv-heads", "2",
                            "--intermediate", "128", "--seed", "0", "--init-std", "0.1")
    out = d / "rounded"
    out.mkdir()
    t = load_file(str(model / "model.safetensors"))
    save_file({k: v.half().float() for k, v in t.items()}, str(out / "model.safetensors"))
    for f in ("config.json", "tokenizer.model"):
        shutil.copy(model / f, out / f)
    return out


@pytest.mark.parametrize("prompt", ["Hello", "What does the coordinator do?", "Tell me a story about a llama."])
def test_llama_cpp_loads_the_export_and_generates_herd_chats_greedy_tokens(rounded, tmp_path, prompt):
    gguf_file = tmp_path / "m.gguf"
    herd("export", "gguf", rounded, gguf_file, "--type", "f16")
    ours = json.loads(herd("chat", rounded, "--no-quantize", "--json", "--greedy", "--repetition-penalty", "1",
                           "--max-new-tokens", 16, "--prompt", prompt).stdout)
    llm = Llama(model_path=str(gguf_file), n_ctx=256, n_threads=2, verbose=False)
    assert llm.n_vocab() == json.loads((rounded / "config.json").read_text())["vocab_size"]
    # llama.cpp's own tokenizer reads the same prompt as herd's
    assert llm.tokenize(f"### HUMAN:\n{prompt}\n\n### RESPONSE:\n".encode(), add_bos=True,
                        special=True) == ours["prompt_tokens"]
    theirs = []
    for token in llm.generate(ours["prompt_tokens"], top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        if token == EOS or len(theirs) == 16:
            break
        theirs.append(token)
    assert len(ours["tokens"]) >= 4 and theirs == ours["tokens"]


@pytest.mark.parametrize("kind", ["bf16", "q8_0"])
def test_llama_cpp_runs_the_other_types(rounded, tmp_path, kind):
    gguf_file = tmp_path / f"m-{kind}.gguf"
    herd("export", "gguf", rounded, gguf_file, "--type", kind)
    llm = Llama(model_path=str(gguf_file), n_ctx=64, n_threads=2, logits_all=True, verbose=False)
    ids = [1, 265, 290, 477, 13, 490, 416]
    llm.eval(ids)
    theirs = torch.tensor(llm.scores[len(ids) - 1])  # the last position's logits
    ours = herd_logits(rounded, [ids], "--no-quantize")[0][0, -1]
    # the file's rounding (bfloat16, or 8-bit blocks) moves the logits a little, not their shape
    assert torch.nn.functional.cosine_similarity(theirs, ours, dim=0) > 0.999
