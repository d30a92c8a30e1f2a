#!/usr/bin/env python3
"""herd's tokenizer.json reader against the tokenizers library (Rust) on the 35,000
generated conversations of bench/tokenize_conversations.py, with a 128,256-id
byte-level vocabulary shaped as Llama-3's (the Llama-3 split pattern, ignore_merges,
128,000 merged pieces and 256 special tokens), trained here by the tokenizers library.

herd: `herd data tokenize` cold, the whole command (read and validate the JSON Lines,
format with the seed's headers, tokenize on every core, write the cache).
tokenizers: `Tokenizer.encode_batch` on the same formatted texts with the same number
of threads (RAYON_NUM_THREADS), timing the encoding only (reading and formatting in
Python are left out: they favour tokenizers). Before timing, the ids of 500
conversations are checked equal. Target: herd no slower.

Usage: bench/tokenize_json.py BUILD_BIN WORKDIR"""
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tokenize_conversations import write_conversations  # noqa: E402

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"


def train_tokenizer(model, data):
    """A Llama-3-shaped tokenizer: 128,000 merged pieces trained on the benchmark's text and
    pseudo-words (the benchmark alone has too few distinct words), then 256 special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    if (model / "tokenizer.json").exists():
        return
    rng = random.Random(0)
    syllables = [a + b for a in "bcdfghjklmnprstvwz" for b in ("a", "e", "i", "o", "u", "ai", "ou", "ea")]
    lines = [l for i, l in enumerate(data.open()) if i < 2000]
    lines += [" ".join("".join(rng.choice(syllables) for _ in range(rng.randint(1, 5))) for _ in range(12))
              for _ in range(200_000)]
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=128_000, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens([BOS, EOS] + [f"<|reserved_special_token_{i}|>" for i in range(254)])
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))])
    model.mkdir(parents=True, exist_ok=True)
    tok.save(str(model / "tokenizer.json"))
    (model / "tokenizer_config.json").write_text(json.dumps({"bos_token": BOS, "eos_token": EOS}))


def seed_text(record):
    """The seed's format, as herd writes it (common/conversation.cc)."""
    text = ""
    for turn in record["conversations"]:
        if turn["from"] == "human":
            text += "### HUMAN:\n" + turn["value"] + "\n\n"
        elif turn["from"] == "gpt":
            text += "### RESPONSE:\n" + turn["value"] + EOS + "\n\n"
        else:
            text += "### " + turn["from"].upper() + ":\n" + turn["value"] + "\n\n"
    return text


def main():
    herd_bin, work = Path(sys.argv[1]), Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    data = work / "conversations.jsonl"
    write_conversations(data)
    model = work / "llama3-128k"
    train_tokenizer(model, data)
    threads = os.cpu_count()
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    texts = [seed_text(json.loads(line)) for line in data.open()]

    sample = work / "sample.json"
    sample.write_text(json.dumps(texts[:500]))
    herd_ids = json.loads(subprocess.run([herd_bin / "herd", "tools", "tokenize", model, "--input", sample],
                                         check=True, capture_output=True, text=True).stdout)
    failures = [i for i, ids in enumerate(herd_ids) if ids != tok.encode(texts[i]).ids]
    for i in failures:
        print(f"FAILED: conversation {i}: herd's ids differ from tokenizers'")

    cache = work / "cache"
    for f in cache.glob("*"):
        f.unlink()
    start = time.perf_counter()
    out = subprocess.run([herd_bin / "herd", "data", "tokenize", "--data", data, "--tokenizer", model, "--cache-dir",
                          cache, "--context", "131072"], check=True, capture_output=True, text=True).stdout
    herd_s = time.perf_counter() - start
    start = time.perf_counter()
    encoded = tok.encode_batch(texts)
    rust_s = time.perf_counter() - start
    tokens = sum(len(e.ids) for e in encoded)
    print(f"vocabulary {tok.get_vocab_size()}, {len(texts)} conversations, {tokens} tokens, {threads} threads")
    print(f"herd data tokenize (whole command) {herd_s:7.2f} s   {out.splitlines()[0]}")
    print(f"tokenizers encode_batch (encoding) {rust_s:7.2f} s")
    print(f"herd / tokenizers: {herd_s / rust_s:.2f} (target: <= 1)")
    print(json.dumps({"herd_s": herd_s, "tokenizers_s": rust_s, "tokens": tokens, "threads": threads,
                      "ids_checked": len(herd_ids), "failures": len(failures)}))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
