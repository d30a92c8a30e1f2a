"""Writes the fuzzers' seed corpora (tests/fuzz/corpus/TARGET/), from the repository's own files and
from messages spelled out here. Run from the repository root with the project's Python:
    .venv/bin/python tests/fuzz/make_seeds.py [TINY_MODEL_DIR [BYTE_LEVEL_MODEL_DIR]]
(TINY_MODEL_DIR: a `herd tools make-tiny-model` output, for the SentencePiece seed; BYTE_LEVEL_MODEL_DIR:
one of `herd tools make-tiny-model --family qwen2 --vocab 300`, for a byte-level tokenizer.json seed.)"""
import json
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fuzz" / "corpus"


def seed(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def field(number, value):
    """A protobuf field: int -> varint, str/bytes -> length-delimited, float -> double."""
    if isinstance(value, bool) or isinstance(value, int):
        return varint(number << 3) + varint(value)
    if isinstance(value, float):
        return varint(number << 3 | 1) + struct.pack("<d", value)
    value = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(value)) + value


def call(method, *fields):
    body = b"".join(field(n, v) for n, v in fields)
    assert len(body) < 256
    return bytes([method, len(body)]) + body


# YAML configs: the repository's.
for f in sorted((ROOT / "configs").glob("*.yaml")):
    seed("config", f.name, f.read_bytes())

# Conversations: the first byte picks vicuna (0), orca (1), raw_text (2); +4 skips invalid records.
vicuna = json.loads((ROOT / "data" / "sample-vicuna.json").read_text())[:3]
seed("conversation", "vicuna", b"\x00" + json.dumps(vicuna, ensure_ascii=False).encode())
seed("conversation", "vicuna-skip", b"\x04" + json.dumps(vicuna + [{"id": 1}]).encode())
orca = [{"system_prompt": "You are helpful.", "question": "Why?", "response": "Because."},
        {"system_prompt": "", "question": "Ünïcode", "response": ""}]
seed("conversation", "orca", b"\x01" + json.dumps(orca, ensure_ascii=False).encode())
seed("conversation", "orca-jsonl", b"\x01" + "\n".join(json.dumps(r) for r in orca).encode())
seed("conversation", "raw", b"\x02" + "Some text,\r\nwith lines and ünïcode — to be cut into chunks.\n".encode())

# Token cache: mode 1 (a body under a valid header): 2 samples (second byte), offsets 0,2,3; records
# 0,1; ids 1,5,7; masks 0,1,1; truncated 0,0; report "{}".
body = struct.pack("<3Q", 0, 2, 3) + struct.pack("<2Q", 0, 1) + struct.pack("<3i", 1, 5, 7) + bytes([0, 1, 1, 0, 0])
seed("token_cache", "two-samples", b"\x01\x02" + body + b"{}")
seed("token_cache", "raw-header", b"\x00HERDTOK\x00" + struct.pack("<IIQQQQQQ", 1, 632, 0x1234, 0, 0, 0, 0, 0))

# Checkpoint manifests.
seed("checkpoint_manifest", "manifest", json.dumps(
    {"step": 1, "files": {"adapter_model.safetensors": {"bytes": 10, "hash": "0000000000000000"}}}))
seed("checkpoint_manifest", "wrong-types", json.dumps({"files": {"adapter_model.safetensors": {"bytes": "10",
                                                                                                "hash": 5}}}))

# Journal: mode 1 (records written with valid checksums): type, length, payload.
def record(type_, payload):
    data = json.dumps(payload).encode()
    return bytes([type_, len(data)]) + data


plan = {"job_id": "job", "global_batch": 4, "train_samples": 16, "train_tokens": 120, "seed": 42, "total_steps": 4,
        "batch_size": 1}
seed("journal", "records", b"\x01" + record(1, {"incarnation": 1, "plan": {}}) +
     record(2, {"attempt": 1, "world_size": 2, "accumulation": 2, "resume_step": 0, "workers": ["w1", "w2"]}) +
     record(3, {"step": 1, "attempt": 1, "loss": 1.5, "tokens": 20, "samples": [0, 1, 2, 3]}) +
     record(4, {"step": 1, "attempt": 1, "paths": ["/x/checkpoint-1"], "digests": ["0" * 64]}) + record(7, {"step": 1}))
seed("journal", "raw", b"\x00" + struct.pack("<IIQ", 2, 1, 0) + b"{}")

# Handlers: WaitForGang, StreamBatches, ReportStep by both workers, KvSet/KvAdd, CommitCheckpoint, time, Drain.
seed("handlers", "a-step", call(2, (1, "0")) + call(2, (1, "1")) + call(7, (1, "0"), (2, 1), (3, 1)) +
     call(10, (1, "0"), (2, 1), (3, 1.5), (4, 10), (6, 1)) + call(10, (1, "1"), (2, 1), (3, 1.5), (4, 10), (6, 1)) +
     call(11, (1, "0"), (2, 1), (3, "/job/trainer/checkpoint-1"), (4, "a" * 64), (5, 1)) +
     call(11, (1, "1"), (2, 1), (3, "/job/trainer/checkpoint-1"), (4, "a" * 64), (5, 1)))
seed("handlers", "store-and-time", call(3, (1, "0"), (2, "k"), (3, b"v"), (4, 1)) + call(6, (1, "1"), (2, "n"), (3, 5),
                                                                                      (4, 1)) +
     call(4, (1, "0"), (2, "k"), (3, 1)) + call(15, (1, "x" * 20)) + call(1, (1, "0")) + call(12) + call(13, (1, "stop")))
seed("handlers", "register-other-config", call(0, (1, "job"), (2, "h"), (5, field(1, "lora.r") + field(2, "16"))))

# SentencePiece model and safetensors: a tiny model's own files.
if len(sys.argv) > 1:
    model = Path(sys.argv[1])
    seed("sentencepiece", "tiny.model", (model / "tokenizer.model").read_bytes())
if len(sys.argv) > 2:
    seed("tokenizer_json", "byte-level-nfc.json", (Path(sys.argv[2]) / "tokenizer.json").read_bytes())
# A byte-fallback tokenizer.json as transformers writes Llama-2's, with six pieces and two merges.
pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["\u2581", "h", "i", "\u2581h", "\u2581hi"]
seed("tokenizer_json", "byte-fallback.json", json.dumps({
    "version": "1.0", "added_tokens": [{"id": i, "content": p, "special": True, "normalized": False} for i, p in
                                       enumerate(pieces[:3])],
    "normalizer": None, "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first",
                                          "split": False},
    "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                                {"Sequence": {"id": "A", "type_id": 0}}],
                       "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
    "decoder": {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"},
        {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
    "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": True, "byte_fallback": True,
              "vocab": {p: i for i, p in enumerate(pieces)}, "merges": [["\u2581", "h"], ["\u2581h", "i"]]}}))
seed("safetensors", "one-tensor", struct.pack("<Q", 64) + json.dumps(
    {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "__metadata__": {"format": "pt"}}).ljust(64).encode()
     + struct.pack("<2f", 1.0, 2.0))
seed("safetensors", "two-dtypes", struct.pack("<Q", 112) + json.dumps(
    {"a": {"dtype": "BF16", "shape": [1, 2], "data_offsets": [0, 4]},
     "b": {"dtype": "U8", "shape": [3], "data_offsets": [4, 7]}}).ljust(112).encode() + bytes(7))

# chat_template: the shape of a real template (a system turn taken out, alternation
# checked, turns trimmed) and one with the engine's other constructs.
seed("chat_template", "turns.jinja", "{{- bos_token }}\n{%- if messages[0]['role'] == 'system' %}\n    {%- set system = messages[0]['content'] | trim %}\n    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system = '' %}\n{%- endif %}\n{{- '<|header|>system\\n\\n' + system + '<|end|>' }}\n{%- for message in messages %}\n    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n        {{- raise_exception('roles must alternate') }}\n    {%- endif %}\n    {{- '<|header|>' + message['role'] + '\\n\\n' + message['content'] | trim + '<|end|>' }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|header|>assistant\\n\\n' }}\n{%- endif %}\n")
seed("chat_template", "constructs.jinja", '{% macro f(a, b=2) %}{{ a ~ b }}{% endmacro %}{% set ns = namespace(n=0) %}{% for m in messages if m.role != "x" %}{{ f(loop.index) }}{{ m.content[1:] | trim | tojson(indent=2) }}{% set ns.n = ns.n + 1 %}{% else %}none{% endfor %}{{ ns.n }}{{ messages | selectattr("role", "equalto", "user") | map(attribute="content") | join(",") }}{{ "a,b".split(",") }}{{ {"k": [1, 2.5, none]} | dictsort }}\n')
