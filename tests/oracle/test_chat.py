"""`herd chat`: greedy replies are transformers' `generate` greedy token for token (with a peft
adapter too), sampling with a seed is reproducible, base + adapter and the merged model say the same,
and through a pseudo-terminal the reply streams and a second turn carries the first in the seed's
prompt style."""
import json
import os
import pty
import select
import shutil
import subprocess
import time

import pytest
import torch
from peft import PeftModel
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

from conftest import BIN, herd
from test_merge import write_adapter, write_dora_adapter

EOS = 2


def chat(model, *args):
    return json.loads(herd("chat", model, "--no-quantize", "--json", *args).stdout)


def reference(model, prompt_ids, new, penalty, adapter=None):
    """transformers' greedy generate on the same ids: the new tokens, EOS left out."""
    m = LlamaForCausalLM.from_pretrained(str(model), torch_dtype=torch.float32).eval()
    if adapter:
        m = PeftModel.from_pretrained(m, str(adapter)).eval()
    with torch.no_grad():
        out = m.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=new,
                         repetition_penalty=penalty, eos_token_id=EOS, pad_token_id=0)
    tokens = out[0, len(prompt_ids):].tolist()
    return tokens[: tokens.index(EOS)] if EOS in tokens else tokens


@pytest.fixture(scope="module")
def adapter(tiny_gqa, tmp_path_factory):
    d = tmp_path_factory.mktemp("chat")
    write_adapter(d / "adapter", tiny_gqa, r=4, alpha=8, targets=("q_proj", "v_proj", "down_proj"), seed=2, std=0.3)
    return d / "adapter"


@pytest.mark.parametrize("penalty", [1.0, 1.15])
def test_greedy_is_transformers_generate(tiny_gqa, penalty):
    got = chat(tiny_gqa, "--prompt", "What does the coordinator do?", "--greedy", "--max-new-tokens", 24,
               "--repetition-penalty", penalty)
    assert got["prompt_tokens"][0] == 1 and len(got["tokens"]) > 0
    assert got["tokens"] == reference(tiny_gqa, got["prompt_tokens"], 24, penalty)


def test_greedy_with_an_adapter_is_peft_generate_and_the_merged_models(tiny_gqa, adapter, tmp_path):
    got = chat(tiny_gqa, "--adapter", adapter, "--prompt", "Tell me about sharding.", "--greedy",
               "--max-new-tokens", 24)
    assert got["tokens"] == reference(tiny_gqa, got["prompt_tokens"], 24, 1.15, adapter)
    assert got["tokens"] != chat(tiny_gqa, "--prompt", "Tell me about sharding.", "--greedy", "--max-new-tokens",
                                 24)["tokens"]  # the adapter changes the reply
    herd("merge", "--base", tiny_gqa, "--adapter", adapter, "--out", tmp_path / "merged", "--dtype", "float32")
    merged = chat(tmp_path / "merged", "--prompt", "Tell me about sharding.", "--greedy", "--max-new-tokens", 24)
    assert merged["tokens"] == got["tokens"] and merged["text"] == got["text"]


def test_a_dora_adapter_chats_as_peft_generate_and_as_its_merged_model(tiny_gqa, tmp_path):
    write_dora_adapter(tmp_path / "dora", tiny_gqa)
    got = chat(tiny_gqa, "--adapter", tmp_path / "dora", "--prompt", "Tell me about sharding.", "--greedy",
               "--max-new-tokens", 24)
    assert got["tokens"] == reference(tiny_gqa, got["prompt_tokens"], 24, 1.15, tmp_path / "dora")
    herd("merge", "--base", tiny_gqa, "--adapter", tmp_path / "dora", "--out", tmp_path / "merged", "--dtype",
         "float32")
    merged = chat(tmp_path / "merged", "--prompt", "Tell me about sharding.", "--greedy", "--max-new-tokens", 24)
    assert merged["tokens"] == got["tokens"]


def test_sampling_with_a_seed_is_reproducible(tiny_gqa):
    runs = [chat(tiny_gqa, "--prompt", "Hello", "--seed", seed, "--max-new-tokens", 32)["tokens"]
            for seed in (5, 5, 6)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_max_length_counts_the_prompt_as_transformers_does(tiny_gqa):
    got = chat(tiny_gqa, "--prompt", "Hello", "--greedy", "--max-length", 20)
    assert len(got["prompt_tokens"]) + len(got["tokens"]) <= 20
    assert got["tokens"] == reference(tiny_gqa, got["prompt_tokens"], 20 - len(got["prompt_tokens"]), 1.15)


def read_until(fd, marker, timeout=60):
    """Bytes from the terminal up to and including `marker`."""
    out, end = b"", time.time() + timeout
    while marker not in out:
        assert time.time() < end, out
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            out += os.read(fd, 4096)
    return out


def test_a_terminal_conversation_streams_and_keeps_its_history(tiny_gqa, tmp_path):
    args = ["--greedy", "--max-new-tokens", 12]
    first = chat(tiny_gqa, "--prompt", "Hello", *args)
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(str(BIN / "herd"), [str(BIN / "herd"), "chat", str(tiny_gqa), "--no-quantize", *map(str, args)])
    try:
        read_until(fd, b"> ")
        os.write(fd, b"Hello\n")
        shown = read_until(fd, b"\r\n> ")  # the echoed line, the streamed reply, the next prompt
        assert shown.startswith(b"Hello\r\n")
        streamed = shown[len(b"Hello\r\n"):-len(b"\r\n> ")]
        # the reply's bytes as the one-shot command prints them (a random model's may not be UTF-8)
        once = subprocess.run([str(BIN / "herd"), "chat", str(tiny_gqa), "--no-quantize", "--prompt", "Hello",
                               *map(str, args)], capture_output=True, timeout=120).stdout
        assert once.endswith(b"\n") and len(once) > 1
        assert streamed == once[:-1].replace(b"\n", b"\r\n")
        os.write(fd, b"\n")  # an empty line ends the conversation
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(fd)

    # The second turn's prompt: the first turn as training formatted it, then the new one.
    p = subprocess.run([str(BIN / "herd"), "chat", str(tiny_gqa), "--no-quantize", "--json", *map(str, args)],
                       input="Hello\nAgain\n\n", capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    one, two = [json.loads(line.removeprefix("> ")) for line in p.stdout.splitlines() if line.startswith("> {")]
    assert one["prompt_tokens"] == first["prompt_tokens"] and one["tokens"] == first["tokens"]
    suffix = "\n\n### HUMAN:\nAgain\n\n### RESPONSE:\n"
    (tmp_path / "s.json").write_text(json.dumps(["### HUMAN:\nHello\n\n### RESPONSE:\n", suffix]))
    head, tail = json.loads(herd("tools", "tokenize", tiny_gqa, "--input", tmp_path / "s.json").stdout)
    assert one["prompt_tokens"] == head
    assert two["prompt_tokens"][: len(head)] == head
    segment = tail[1:]  # encoded alone after BOS, as after the EOS special token
    assert two["prompt_tokens"][-len(segment):] == segment and two["prompt_tokens"][-len(segment) - 1] == EOS
    assert two["dropped_turns"] == 0
    assert two["tokens"] == reference(tiny_gqa, two["prompt_tokens"], 12, 1.15)


def chain_model(path, tokenizer_dir, chain):
    """A Llama whose next token depends only on the current one: chain[i] -> chain[i + 1],
    anything else -> EOS. Its layers are zero (the residual stream is the embedding, an identity
    matrix), so the logits are lm_head's column for the current token."""
    vocab = json.loads((tokenizer_dir / "config.json").read_text())["vocab_size"]
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": vocab,
           "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 4,
           "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "bos_token_id": 1, "eos_token_id": 2,
           "tie_word_embeddings": False, "torch_dtype": "float32"}
    t = {"model.embed_tokens.weight": torch.eye(vocab), "model.norm.weight": torch.ones(vocab),
         "model.layers.0.input_layernorm.weight": torch.ones(vocab),
         "model.layers.0.post_attention_layernorm.weight": torch.ones(vocab)}
    for m, (o, i) in {"self_attn.q_proj": (vocab, vocab), "self_attn.k_proj": (vocab, vocab),
                      "self_attn.v_proj": (vocab, vocab), "self_attn.o_proj": (vocab, vocab),
                      "mlp.gate_proj": (8, vocab), "mlp.up_proj": (8, vocab), "mlp.down_proj": (vocab, 8)}.items():
        t[f"model.layers.0.{m}.weight"] = torch.zeros(o, i)
    head = torch.zeros(vocab, vocab)
    head[EOS, :] = 1.0
    for a, b in zip(chain, chain[1:]):
        head[:, a] = 0.0
        head[b, a] = 1.0
    t["lm_head.weight"] = head
    path.mkdir()
    save_file(t, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(cfg))
    shutil.copy(tokenizer_dir / "tokenizer.model", path / "tokenizer.model")
    return path


def test_a_reply_ends_where_the_model_starts_a_human_turn(tiny_gqa, tmp_path):
    (tmp_path / "s.json").write_text(json.dumps(["### HUMAN:\nHello\n\n### RESPONSE:\n", "Hi", "### HUMAN:"]))
    prompt, hi, human = json.loads(herd("tools", "tokenize", tiny_gqa, "--input", tmp_path / "s.json").stdout)
    # after the prompt: "Hi", then "### HUMAN:" (then EOS, which must not be reached)
    chain = [prompt[-1], *hi[1:], *human[1:]]
    assert len(set(chain)) == len(chain)
    model = chain_model(tmp_path / "m", tiny_gqa, chain)
    got = chat(model, "--prompt", "Hello", "--greedy")
    assert got["prompt_tokens"] == prompt
    assert got["tokens"] == chain[1:]  # generation stopped at the token that completed "### HUMAN:"
    assert got["text"] == "Hi"
    shown = subprocess.run([str(BIN / "herd"), "chat", str(model), "--no-quantize", "--greedy", "--prompt", "Hello"],
                           capture_output=True, text=True, timeout=120)
    assert shown.stdout == "Hi\n"  # no part of "### HUMAN:" was streamed
    without_stop = chain_model(tmp_path / "eos", tiny_gqa, chain[:1 + len(hi) - 1])
    assert chat(without_stop, "--prompt", "Hello", "--greedy")["tokens"] == hi[1:]  # then EOS


def test_the_oldest_turns_are_dropped_when_the_context_fills(tiny_gqa):
    """--max-length 64: the prompt must leave a quarter of it (16 tokens) for the reply."""
    p = subprocess.run([str(BIN / "herd"), "chat", str(tiny_gqa), "--no-quantize", "--json", "--greedy",
                        "--max-length", "64"], input="One\nTwo\nThree\nFour\n\n", capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    turns = [json.loads(line.removeprefix("> ")) for line in p.stdout.splitlines() if line.startswith("> {")]
    assert len(turns) == 4
    for t in turns:
        assert len(t["prompt_tokens"]) + 16 <= 64 and len(t["prompt_tokens"]) + len(t["tokens"]) <= 64
    assert turns[-1]["dropped_turns"] >= 1  # four short turns of replies do not fit in 48 tokens
    assert f"herd chat: {turns[-1]['dropped_turns']} of the earliest turns left out of the prompt" in p.stderr
