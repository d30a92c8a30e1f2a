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
    config = re.sub(r"  eval_fraction: .*\n", "", config)
    path.write_text(config.replace("  type: vicuna\n", "  type: vicuna\n  packing: true\n  eval_fraction: 0.1\n"))
    out = herd("data", "inspect", path, "--samples", "0").stdout
    assert "eval split (data.eval_fraction 0.1, seed 42): 24 eval, 216 train samples" in out
    assert re.search(r"packing \(data.packing\): 216 train samples in \d+ rows of 256 tokens", out)
    # Without a split every sample is packed: the figures follow from the samples' lengths.
    path.write_text(config.replace("  type: vicuna\n", "  type: vicuna\n  packing: true\n"))
    tokens = sum(len(s["token_ids"]) for s in json.loads(herd("data", "inspect", path, "--json").stdout))
    m = re.search(r"packing \(data.packing\): 240 train samples in (\d+) rows of 256 tokens, ([\d.]+)% full",
                  herd("data", "inspect", path, "--samples", "0").stdout)
    rows = int(m.group(1))
    assert -(-tokens // 256) <= rows < 240
    assert float(m.group(2)) == round(100 * tokens / (rows * 256), 1)


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


ORCA_HEADERS = {"system_header": "### System:\n", "instruction_header": "### Instruction:\n",
                "response_header": "### Response:\n"}
ORCA = [
    {"id": "o1", "system_prompt": "You are an AI assistant.", "question": "Wo liegt Zürich? 🚀",
     "response": "In der Schweiz."},
    {"id": "o2", "system_prompt": "", "question": "Say </s> once.", "response": ""},  # empty fields, a literal EOS
    {"id": "o3", "system_prompt": "Σύντομα.", "question": "", "response": "Ναι, πάντα σύντομα."},
]


def seed_orca_text(point, eos="</s>"):
    """llm_qlora's OrcaDataProcessor._generate_prompt with the published headers."""
    return f"""{ORCA_HEADERS["system_header"]}{point["system_prompt"]}

{ORCA_HEADERS["instruction_header"]}{point["question"]}

{ORCA_HEADERS["response_header"]}{point["response"]}{eos}
"""


def seed_raw_chunks(files, chunk_char_len, chunk_char_overlap, chunk_prefix=None):
    """llm_qlora's RawTextDataProcessor: each file read in text mode, cut by characters."""
    texts = []
    for text_file in files:
        with open(text_file, "r", encoding="utf-8") as file:
            all_text = file.read()
        i = 0
        while i < len(all_text):
            chunk = ""
            if chunk_prefix is not None:
                chunk += chunk_prefix
            i = max(i - chunk_char_overlap, 0)
            chunk += all_text[i:i + chunk_char_len]
            texts.append(chunk)
            i += chunk_char_len
    return texts


def legacy_ids(sp, text, context):
    """The 2023 slow LlamaTokenizer: BOS, then each piece between literal </s> encoded alone."""
    ids = [1]
    for part in re.split("(</s>)", text):
        ids += [2] if part == "</s>" else (sp.encode(part) if part else [])
    return ids[:context]


def typed_config(tmp_path, tiny, data_yaml, context=4096):
    path = tmp_path / "typed.yaml"
    path.write_text(f"""model_name: t
base_model: {tiny}
model_context_window: {context}
data:
{data_yaml}lora: {{r: 4, lora_alpha: 8, target_modules: [q_proj], lora_dropout: 0.0, bias: none, task_type: CAUSAL_LM}}
trainer: {{batch_size: 1, gradient_accumulation_steps: 1, warmup_steps: 0, num_train_epochs: 1, learning_rate: 0.001,
          logging_steps: 1}}
trainer_output_dir: {tmp_path}/trainer
model_output_dir: {tmp_path}/models
""")
    return path


def yaml_string(s):
    return json.dumps(s)  # a JSON string is a YAML double-quoted string


def test_orca_text_and_ids_are_the_seeds(tiny_gqa, tmp_path):
    data = tmp_path / "orca.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ORCA), encoding="utf-8")
    headers = "".join(f"  {k}: {yaml_string(v)}\n" for k, v in ORCA_HEADERS.items())
    sp = spm.SentencePieceProcessor(model_file=str(tiny_gqa / "tokenizer.model"))
    for context in (4096, 12):
        config = typed_config(tmp_path, tiny_gqa, f"  type: orca\n  dataset: {data}\n" + headers, context)
        samples = json.loads(herd("data", "inspect", config, "--json").stdout)
        assert [s["text"] for s in samples] == [seed_orca_text(r) for r in ORCA]
        assert [s["id"] for s in samples] == ["o1", "o2", "o3"]
        for s in samples:
            assert s["token_ids"] == legacy_ids(sp, s["text"], context)
            assert s["loss_mask"] == [0] + [1] * (len(s["token_ids"]) - 1)
            assert s["truncated"] == (len(legacy_ids(sp, s["text"], 1 << 20)) > context)
    # data.train_on_inputs: false keeps the response, its EOS and newline in the loss, nothing else.
    config.write_text(config.read_text().replace("  type: orca\n", "  type: orca\n  train_on_inputs: false\n")
                      .replace("model_context_window: 12", "model_context_window: 4096"))
    for s, r in zip(json.loads(herd("data", "inspect", config, "--json").stdout), ORCA):
        kept = sp.decode([i for i, m in zip(s["token_ids"], s["loss_mask"]) if m and i != 2])
        eos = [i for i, t in enumerate(s["token_ids"]) if t == 2]
        assert [s["loss_mask"][i] for i in eos] == [0] * (len(eos) - 1) + [1]  # the response's EOS only
        dropped = sp.decode([i for i, m in zip(s["token_ids"], s["loss_mask"]) if not m])
        assert "Instruction" in dropped and "Response" in dropped and "Response" not in kept
        assert r["response"] in kept and (not r["question"] or r["question"] not in kept)


def test_raw_text_chunks_and_ids_are_the_seeds(tiny_gqa, tmp_path):
    long = tmp_path / "long.txt"
    long.write_bytes("Erste Zeile: Grüße aus Köln 🚀\r\nzweite Zeile\rdritte Zeile — ende.\n".encode() * 3)
    short = tmp_path / "short.txt"
    short.write_text("kurz ✓", encoding="utf-8")  # shorter than one chunk
    sp = spm.SentencePieceProcessor(model_file=str(tiny_gqa / "tokenizer.model"))
    for length, overlap, prefix in [(40, 0, None), (40, 7, None), (25, 3, "Text: "), (1000, 999, "</s>")]:
        data = (f"  type: raw_text\n  text_files: [{long}, {short}]\n  chunk_char_len: {length}\n"
                f"  chunk_char_overlap: {overlap}\n" + (f"  chunk_prefix: {yaml_string(prefix)}\n" if prefix else ""))
        config = typed_config(tmp_path, tiny_gqa, data, context=30)
        samples = json.loads(herd("data", "inspect", config, "--json").stdout)
        expected = seed_raw_chunks([long, short], length, overlap, prefix)
        assert [s["text"] for s in samples] == expected, (length, overlap, prefix)
        assert expected[-1] == (prefix or "") + "kurz ✓"
        for s in samples:
            assert s["token_ids"] == legacy_ids(sp, s["text"], 30)
            assert s["loss_mask"] == [0] + [1] * (len(s["token_ids"]) - 1)
