#!/usr/bin/env python3
"""Where a profiled step's GPU time goes: sums the kernels of a Chrome trace
(herd_bench_train_step --profile FILE) by kind and by name.

    python3 bench/kernel_time.py TRACE [--top N]

Kinds are read from kernel names: GEMM (cuBLAS/CUTLASS), attention (flash/cuDNN/
efficient), herd's NF4 and fused kernels, the rest of PyTorch's element-wise,
reduction and copy kernels. "idle" is the time within the step's kernel span when
no kernel ran (launch gaps, host waits).
"""
import argparse
import json
import re
from collections import defaultdict

KINDS = [
    ("attention", r"flash|fmha|cudnn|attention|sdpa"),
    ("GEMM", r"gemm|cutlass|xmma|nvjet|cublas|sm\d+_.*_tn|splitK|gemv"),
    ("herd NF4", r"dequantize|herd::kernels::.*gemv"),
    ("herd fused", r"rms_norm_kernel|rms_norm_backward|rotary_kernel|silu_mul|lora_input_grad"),
    ("dropout", r"dropout"),
    ("softmax/cross-entropy", r"softmax|nll_loss|cross_entropy"),
    ("reduction", r"reduce_kernel|Reduce"),
    ("copy/cast", r"copy|Memcpy|Memset|cat_|CatArray|index|gather|scatter"),
    ("element-wise", r"elementwise|vectorized|unrolled"),
]


def kind_of(name):
    for kind, pattern in KINDS:
        if re.search(pattern, name, re.IGNORECASE):
            return kind
    return "other"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    events = json.load(open(args.trace))
    events = events.get("traceEvents", events) if isinstance(events, dict) else events
    kernels = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    if not kernels:
        print("kernel_time: no GPU kernels in the trace")
        return
    by_kind, by_name, count = defaultdict(float), defaultdict(float), defaultdict(int)
    for e in kernels:
        by_kind[kind_of(e["name"])] += e["dur"]
        by_name[e["name"]] += e["dur"]
        count[e["name"]] += 1
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in kernels)
    busy, end = 0.0, spans[0][0]
    for a, b in spans:
        busy += max(0.0, b - max(a, end))
        end = max(end, b)
    span = end - spans[0][0]
    print(f"GPU kernels of one step: {len(kernels)} launches, span {span / 1e3:.1f} ms, "
          f"busy {busy / 1e3:.1f} ms, idle {(span - busy) / 1e3:.1f} ms")
    total = sum(by_kind.values())
    for kind, us in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<24} {us / 1e3:8.1f} ms  {100 * us / total:5.1f}%")
    print(f"top {args.top} kernels:")
    for name, us in sorted(by_name.items(), key=lambda kv: -kv[1])[: args.top]:
        short = re.sub(r"\s+", " ", name)[:110]
        print(f"  {us / 1e3:8.2f} ms {count[name]:5d}x  {short}")


if __name__ == "__main__":
    main()
