"""Fixtures shared by the integration tests."""
import os
import subprocess
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A 2-layer random Llama (hidden 64, GQA 4/2) with its tokenizer, made by herd."""
    d = tmp_path_factory.mktemp("model") / "tiny"
    out = subprocess.run([str(Path(os.environ["HERD_BIN"]) / "herd"), "tools", "make-tiny-model", str(d), "--layers",
                          "2", "--hidden", "64", "--heads", "4", "--kv-heads", "2", "--intermediate", "128", "--seed",
                          "0"], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    return d
