#!/usr/bin/env python3
"""Tokenizing 35,000 generated multi-turn conversations (about 1,000 tokens each):
`herd data tokenize` cold (read, format, tokenize on all cores, write the cache) and
again (cache hit). Usage: bench/tokenize_conversations.py BUILD_BIN WORKDIR"""
import json
import random
import subprocess
import sys
import time
from pathlib import Path

WORDS = ("the model trains on every sample while a worker reads data and writes checkpoints so that "
         "gradients flow through adapters quantized weights stay frozen loss falls learning rate warms up "
         "coordinator shards conversations tokenizer splits text into pieces memory bandwidth matters "
         "attention heads share keys rotary embeddings encode positions").split()


def sentence(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 18))).capitalize() + rng.choice(".?!")


def write_conversations(data):
    """The benchmark's 35,000 conversations, written once to `data` (JSON Lines)."""
    if data.exists():
        return
    rng = random.Random(1)
    with data.open("w") as f:
        for i in range(35_000):
            turns = []
            for _ in range(rng.randint(2, 5)):
                turns.append({"from": "human", "value": " ".join(sentence(rng) for _ in range(rng.randint(1, 4)))})
                turns.append({"from": "gpt", "value": " ".join(sentence(rng) for _ in range(rng.randint(8, 20)))})
            f.write(json.dumps({"id": i, "conversations": turns}) + "\n")


def main():
    herd_bin, work = Path(sys.argv[1]), Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    data = work / "conversations.jsonl"
    write_conversations(data)
    model = work / "tokenizer-model"
    if not (model / "tokenizer.model").exists():
        sample = work / "sample.txt"
        sample.write_text("".join(l for i, l in enumerate(data.open()) if i < 2000))
        subprocess.run([herd_bin / "herd", "tools", "make-tiny-model", model, "--vocab", "1000", "--text", sample],
                       check=True, capture_output=True)
    cache = work / "cache"
    for f in cache.glob("*"):
        f.unlink()
    args = [herd_bin / "herd", "data", "tokenize", "--data", data, "--tokenizer", model, "--cache-dir", cache,
            "--context", "4096"]
    for label in ("cold", "cache hit"):
        start = time.perf_counter()
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
        print(f"{label:10s} {time.perf_counter() - start:7.2f} s  {out.splitlines()[0]}")
    print(f"data: {data.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
