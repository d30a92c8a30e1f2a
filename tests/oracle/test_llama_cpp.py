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


def byte_level_model(d, family, seed):
    """A byte-level vocabulary (the tokenizers library's, trained here) and a random transformers
    model of `family` over it: Qwen2 (biases, no BOS) or a Llama-3-style Llama. Weights of std 0.1,
    rounded to float16 and stored as float32, as above."""
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    from conftest import LLAMA3_SPLIT, QWEN2_SPLIT, byte_level_tokenizer
    if family == "qwen2":
        byte_level_tokenizer(d, QWEN2_SPLIT, None, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None,
                             "<|endoftext|>", False)
    else:
        byte_level_tokenizer(d, LLAMA3_SPLIT, None, ["<|begin_of_text|>", "<|end_of_text|>"], "<|begin_of_text|>",
                             "<|end_of_text|>", True)
    vocab = Tokenizer.from_file(str(d / "tokenizer.json")).get_vocab_size()
    shape = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.1, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = (Qwen2ForCausalLM(Qwen2Config(rope_theta=1000000.0, **shape)) if family == "qwen2"
             else LlamaForCausalLM(LlamaConfig(rope_theta=500000.0, **shape)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.1)
            p.copy_(p.half().float())
    model.save_pretrained(str(d))
    return d


@pytest.mark.parametrize("family, seed", [("qwen2", 2), ("llama3", 3)])  # seeds whose greedy tokens vary
def test_llama_cpp_generates_herd_chats_tokens_with_a_byte_level_vocabulary(tmp_path, family, seed):
    """A Qwen2 (llama.cpp's qwen2, its q/k/v biases, pre-tokenizer "qwen2") and a Llama with
    Llama-3's vocabulary shape (pre-tokenizer "llama-bpe"): the "gpt2" vocabulary in the file
    tokenizes the prompt as herd does, and llama.cpp generates herd chat --greedy's tokens."""
    model = byte_level_model(tmp_path / family, family, seed)
    gguf_file = tmp_path / "m.gguf"
    herd("export", "gguf", model, gguf_file, "--type", "f16")
    prompt = "Tell me a story about a llama."
    ours = json.loads(herd("chat", model, "--no-quantize", "--json", "--greedy", "--repetition-penalty", "1",
                           "--max-new-tokens", 16, "--prompt", prompt).stdout)
    llm = Llama(model_path=str(gguf_file), n_ctx=256, n_threads=2, verbose=False)
    assert llm.tokenize(f"### HUMAN:\n{prompt}\n\n### RESPONSE:\n".encode(), add_bos=True,
                        special=True) == ours["prompt_tokens"]
    eos = llm.token_eos()
    theirs = []
    for token in llm.generate(ours["prompt_tokens"], top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        if token == eos or len(theirs) == 16:
            break
        theirs.append(token)
    assert len(set(ours["tokens"])) >= 4 and theirs == ours["tokens"]
