"""Shared fixtures for the oracle tests: herd's binaries against the Python peers
(transformers, peft, bitsandbytes, safetensors) on tiny models made by herd."""
import json
import os
import subprocess
from pathlib import Path

import random

import pytest

BIN = Path(os.environ["HERD_BIN"])

# The pre-tokenizer patterns of Llama-3's and Qwen2's tokenizer.json.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")


def herd(*args, check=True):
    out = subprocess.run([str(BIN / "herd"), *map(str, args)], capture_output=True, text=True, timeout=600)
    if check and out.returncode != 0:
        raise AssertionError(f"herd {' '.join(map(str, args))} failed ({out.returncode}):\n{out.stderr}")
    return out


def make_tiny_model(path, *extra):
    herd("tools", "make-tiny-model", path, *extra)
    return Path(path)


@pytest.fixture(scope="session")
def tiny_gqa(tmp_path_factory):
    """2 layers, 4 query heads sharing 2 KV heads."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "gqa", "--layers", "2", "--hidden", "64", "--heads", "4",
                           "--kv-heads", "2", "--intermediate", "160", "--seed", "3")


def herd_logits(model, rows, *extra):
    """herd's logits for `rows` (lists of ids; short rows are right-padded)."""
    from safetensors.torch import load_file
    out = Path(model).parent / f"logits-{os.getpid()}-{abs(hash((str(model), str(rows), extra)))}.safetensors"
    herd("tools", "logits", model, "--ids", ";".join(",".join(map(str, r)) for r in rows), "--out", out, *extra)
    t = load_file(str(out))
    out.unlink()
    return t["logits"], t["input_ids"], t["attention_mask"]


def edit_config(model, **changes):
    cfg_path = Path(model) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(changes)
    cfg_path.write_text(json.dumps(cfg))


def corpus():
    rng = random.Random(1)
    words = ["the", "model", "trains", "on", "every", "sample", "Ünïcödé", "naïve", "日本語のテキスト", "Привет",
             "мир", "it's", "I'M", "we'LL", "12345", "3.14159", "😀", "👍🏽", "### HUMAN:", "### RESPONSE:"]
    return [" ".join(rng.choice(words) for _ in range(20)) + rng.choice(["\n", "\n\n", " ", "\r\n"]) for _ in range(3000)]


def byte_level_tokenizer(out, split, normalizer, specials, bos, eos, ignore_merges, vocab=1500):
    """A byte-level BPE tokenizer.json trained by the tokenizers library (with `split` as its
    pre-tokenizer's pattern, as Llama-3's and Qwen2's are built) and its tokenizer_config.json."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if normalizer:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials,
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                          show_progress=False))
    byte_level_post = processors.ByteLevel(trim_offsets=False)
    tok.post_processor = processors.Sequence([byte_level_post, processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])]) if bos else byte_level_post
    out.mkdir(parents=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"bos_token": bos, "eos_token": eos}))
    return out
