#!/usr/bin/env python3
"""herd against transformers + peft on the same device (a GPU in scripts/gpu-check;
the CPU in the oracle tests): the same tiny random
Llama (NF4 base: transformers gets herd's dequantized weights, since bitsandbytes is
not there), the same LoRA adapter (random B, so that every gradient is non-zero),
the same batch. One training forward and backward each (activation recompute on in
herd, dropout off): the mean next-token loss and every LoRA gradient.

Two precisions: float32 everywhere (herd --compute-dtype float32, transformers in
float32), which must agree to float32 rounding, and bf16 (herd: bf16 GEMMs and a bf16
hidden stream; transformers: the model in bfloat16, peft's adapters in float32).
bf16 differs from float32 by its rounding on both sides, so herd's bf16 error against
the float32 reference must stay within twice transformers' own bf16 error plus 0.5%.

Usage: bench/parity_vs_transformers.py BUILD_BIN WORKDIR [DEVICE]   (DEVICE: cuda; exit status 1 when a check fails)"""
import subprocess
import sys
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

SHAPE = ["--layers", "2", "--hidden", "256", "--heads", "8", "--kv-heads", "2", "--intermediate", "688",
         "--seed", "5"]
BATCH, TOKENS = 2, 128


def herd(bin_dir, *args):
    out = subprocess.run([str(Path(bin_dir) / "herd"), *map(str, args)], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"herd {' '.join(map(str, args))} failed ({out.returncode}):\n{out.stderr}")


def transformers_step(model_dir, adapter, weights, ids, dtype, device):
    base = LlamaForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32)
    state = base.state_dict()
    for name, t in weights.items():  # herd's dequantized NF4 base weights
        state[name].copy_(t)
    base = base.to(device, dtype)
    model = PeftModel.from_pretrained(base, str(adapter), is_trainable=True)
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        if p.requires_grad:  # base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight
            grads[name.replace(".default", "")] = p.grad.float().cpu()
    return loss.item(), grads


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def main():
    bin_dir, work = Path(sys.argv[1]), Path(sys.argv[2])
    device = sys.argv[3] if len(sys.argv) > 3 else "cuda"
    work.mkdir(parents=True, exist_ok=True)
    model_dir, adapter = work / "tiny", work / "adapter"
    herd(bin_dir, "tools", "make-tiny-model", model_dir, *SHAPE)
    herd(bin_dir, "tools", "init-adapter", model_dir, adapter, "--r", "8", "--alpha", "32",
         "--targets", "q_proj,k_proj,v_proj", "--random-b")
    torch.manual_seed(0)
    vocab = __import__("json").loads((model_dir / "config.json").read_text())["vocab_size"]
    ids = torch.randint(0, vocab, (BATCH, TOKENS))
    rows = ";".join(",".join(map(str, r.tolist())) for r in ids)

    runs = {}
    for name, flags in {"fp32": ["--compute-dtype", "float32"], "bf16": ["--compute-dtype", "bfloat16", "--bf16"]}.items():
        out = work / f"herd-{name}.safetensors"
        herd(bin_dir, "tools", "grads", model_dir, "--adapter", adapter, "--ids", rows, "--out", out,
             "--device", device, *flags)
        runs[name] = load_file(str(out))
    herd_fp32, herd_bf16 = runs["fp32"], runs["bf16"]
    weights = {k: v for k, v in herd_fp32.items() if k.startswith("model.layers.")}
    assert all(torch.equal(weights[k], herd_bf16[k]) for k in weights), "the dequantized weights differ by run"

    ids = ids.to(device)
    ref_loss, ref = transformers_step(model_dir, adapter, weights, ids, torch.float32, device)
    hf_loss, hf_bf16 = transformers_step(model_dir, adapter, weights, ids, torch.bfloat16, device)

    failures = 0
    print(f"{'':58} {'herd fp32':>10} {'hf bf16':>10} {'herd bf16':>10}   (error against transformers fp32)")
    lines = [("loss", abs(herd_fp32["loss"].item() - ref_loss) / ref_loss, abs(hf_loss - ref_loss) / ref_loss,
              abs(herd_bf16["loss"].item() - ref_loss) / ref_loss)]
    for name in sorted(ref):
        lines.append((name + ".grad", rel(herd_fp32[name + ".grad"], ref[name]), rel(hf_bf16[name], ref[name]),
                      rel(herd_bf16[name + ".grad"], ref[name])))
    worst = [0.0, 0.0, 0.0]
    for name, e32, ehf, e16 in lines:
        ok = e32 < 1e-4 and e16 <= 2 * ehf + 5e-3
        failures += not ok
        worst = [max(w, e) for w, e in zip(worst, (e32, ehf, e16))]
        print(f"{name.replace('base_model.model.model.', ''):58} {e32:10.2e} {ehf:10.2e} {e16:10.2e}{'' if ok else '   FAILED'}")
    print(f"parity: loss {ref_loss:.6f} (transformers fp32), herd fp32 {herd_fp32['loss'].item():.6f}, "
          f"herd bf16 {herd_bf16['loss'].item():.6f}; {len(lines) - 1} LoRA gradients; worst relative error "
          f"herd fp32 {worst[0]:.1e}, transformers bf16 {worst[1]:.1e}, herd bf16 {worst[2]:.1e}; "
          f"{failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
