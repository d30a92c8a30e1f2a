"""Shared fixtures for the oracle tests: herd's binaries against the Python peers
(transformers, peft, bitsandbytes, safetensors) on tiny models made by herd."""
import json
import os
import subprocess
from pathlib import Path

import pytest

BIN = Path(os.environ["HERD_BIN"])


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
