"""`herd data inspect` on conversation data: the seed's text byte for byte, token ids
as the 2023 tokenizer gave them, and the loss mask."""
import json
import os
import re
from pathlib import Path

import sentencepiece as spm

from conftest import herd

SRC = Path(__file__).resolve().parents[2]
RECORDS = [
    {"id": "a", "conversations": [{"from": "human", "value": "alpha question"},
                                  {"from": "gpt", "value": "bravo answer"},
                                  {"from": "human", "value": "charlie again"},
                                  {"from": "gpt", "value": "delta reply"}]},
    {"id": "b", "conversations": [{"from": "system", "value": "echo rules"}, {"from": "human", "value": "foxtrot"},
                                  {"from": "gpt", "value": "golf"}]},
]


def seed_text(conversations):
    """What llm_qlora's VicunaDataProcessor wrote (default headers, EOS "</s>")."""
    out = ""
    for turn in conversations:
        if turn["from"] == "human":
            out += "### HUMAN:\n" + turn["value"] + "\n\n"
        elif turn["from"] == "gpt":
            out += "### RESPONSE:\n" + turn["value"] + "</s>" + "\n\n"
        else:
            out += "### " + turn["from"].upper() + ":\n" + turn["value"] + "\n\n"
    return out


def inspect(tiny, data, *extra):
    return json.loads(herd("data", "inspect", "--data", data, "--tokenizer", tiny, "--json", *extra).stdout)


def test_text_ids_and_masks(tiny_gqa, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    sp = spm.SentencePieceProcessor(model_file=str(tiny_gqa / "tokenizer.model"))
    samples = inspect(tiny_gqa, data)
    assert [s["text"] for s in samples] == [seed_text(r["conversations"]) for r in RECORDS]
    for s in samples:
        expected = [1]
        for part in re.split("(</s>)", s["text"]):
            expected += [2] if part == "</s>" else (sp.encode(part) if part else [])
        assert s["token_ids"] == expected
        assert s["loss_mask"] == [0] + [1] * (len(expected) - 1)  # every token, as the seed trained
    assert samples[0]["token_ids"].count(2) == 2 and samples[1]["token_ids"].count(2) == 1

    masked = inspect(tiny_gqa, data, "--mask-inputs")
    for s, r in zip(masked, RECORDS):
        kept = sp.decode([i for i, m in zip(s["token_ids"], s["loss_mask"]) if m and i != 2])
        dropped = sp.decode([i for i, m in zip(s["token_ids"], s["loss_mask"]) if not m])
        for turn in r["conversations"]:
            assert (turn["value"] in kept) == (turn["from"] == "gpt"), (turn, kept)
            assert (turn["value"] in dropped) == (turn["from"] != "gpt"), (turn, dropped)
        assert "HUMAN" in dropped and "RESPONSE" in dropped and "HUMAN" not in kept
        eos_positions = [i for i, t in enumerate(s["token_ids"]) if t == 2]
        assert all(s["loss_mask"][i] == 1 for i in eos_positions)  # the model learns to stop


def test_truncation_at_the_context_window(tiny_gqa, tmp_path):
    data = tmp_path / "d.json"
    data.write_text(json.dumps(RECORDS))
    full = inspect(tiny_gqa, data)
    cut = inspect(tiny_gqa, data, "--context", "10")
    for f, c in zip(full, cut):
        assert c["token_ids"] == f["token_ids"][:10] and c["truncated"] and len(c["loss_mask"]) == 10


def test_inspect_with_a_config_on_the_sample_data(tiny_gqa, tmp_path):
    config = (SRC / "configs" / "tiny-demo.yaml").read_text()
    config = config.replace("build/demo/tiny-llama", str(tiny_gqa))
    config = config.replace("data/sample-vicuna.json", str(SRC / "data" / "sample-vicuna.json"))
    path = tmp_path / "demo.yaml"
    path.write_text(config)
    out = herd("data", "inspect", path, "--samples", "2").stdout
    assert out.count("== record") == 2
    assert "sample-vicuna.json: 240 records, 240 samples" in out
    assert "truncated at the context window (256):" in out
    path.write_text(config.replace("  type: vicuna\n", "  type: vicuna\n  packing: true\n  eval_fraction: 0.1\n"))
    out = herd("data", "inspect", path, "--samples", "0").stdout
    assert "eval split (data.eval_fraction 0.1, seed 42): 24 eval, 216 train samples" in out
    assert re.search(r"packing \(data.packing\): 240 samples in \d+ windows of up to 256 tokens", out)


def test_bad_records_are_named_and_skipped(tiny_gqa, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(RECORDS[0]) + "\n" + '{"conversations": []}\n' + json.dumps(RECORDS[1]) + "\n")
    out = herd("data", "inspect", "--data", data, "--tokenizer", tiny_gqa, check=False)
    assert out.returncode == 1
    assert f"{data}: record 1: \"conversations\" is empty (empty conversation;" in out.stderr


def test_tokenize_caches_and_rebuilds_a_corrupted_cache(tiny_gqa, tmp_path):
    args = ["data", "tokenize", "--data", SRC / "data" / "sample-vicuna.json", "--tokenizer", tiny_gqa,
            "--cache-dir", tmp_path / "cache"]
    first = herd(*args)
    assert "240 samples" in first.stdout and "tokenized into" in first.stdout
    assert "cache hit" in herd(*args).stdout
    (cache,) = (tmp_path / "cache").glob("*.herdtok")
    raw = bytearray(cache.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    cache.write_bytes(bytes(raw))
    rebuilt = herd(*args)
    assert "tokenized into" in rebuilt.stdout
    assert "was not used (checksum mismatch); rebuilt it" in rebuilt.stderr
    assert "cache hit" in herd(*args).stdout
    # Other settings are another cache entry, never the same file.
    herd(*args, "--mask-inputs")
    assert len(list((tmp_path / "cache").glob("*.herdtok"))) == 2
