"""One training forward and backward of herd (NF4 base, LoRA on q/k/v, recompute)
against transformers + peft on the CPU, in float32 and with herd's bf16 hidden
stream (bench/parity_vs_transformers.py; scripts/gpu-check runs it on a GPU)."""
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2]


def test_loss_and_lora_gradients_match_transformers(tmp_path):
    out = subprocess.run([sys.executable, str(SRC / "bench" / "parity_vs_transformers.py"), os.environ["HERD_BIN"],
                          str(tmp_path), "cpu"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 failed" in out.stdout
