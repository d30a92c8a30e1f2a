"""What exporting costs a step: the demo (configs/tiny-demo.yaml on scripts/demo's model, one
worker, 600 steps) with metrics off (no Prometheus endpoints, no TensorBoard) and on (both
endpoints, TensorBoard event files, and a scraper reading both /metrics every second), run in
turns in this one script. The trainer gets one thread (OMP_NUM_THREADS=1), so that on a
2-core machine the exporters and the scraper have a core as they would on a GPU node.

Two figures. (1) The training thread's own time in the exporter: the `done` record's
`export_seconds` over the steps' summed wall time (`seconds`), in each "on" run. (2) The step
time on against off: the median step of each run (the first 20 steps left out), as the ratio
of each round's "on" run to its "off" run (the two in either order, by turns); runs on a shared machine drift by several per
cent, so (2) bounds what (1) cannot see (the exporter threads, the scrapes) only as far as
that drift allows. Every failed run is printed and makes the script exit 1.

    .venv/bin/python bench/metrics_overhead.py [--rounds 5] [--workdir build/bench-metrics]
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERD = ROOT / "build" / "bin" / "herd"
SPEC = ["--layers", "2", "--hidden", "64", "--heads", "4", "--kv-heads", "2", "--intermediate", "128", "--seed", "0",
        "--init-std", "0.1"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_config(workdir, on):
    text = (ROOT / "configs" / "tiny-demo.yaml").read_text()
    text = text.replace("build/demo/tiny-llama", str(workdir / "tiny-llama")).replace(
        "data/sample-vicuna.json", str(ROOT / "data" / "sample-vicuna.json")).replace("build/demo/", f"{workdir}/")
    text = text[:text.index("metrics:")]
    ports = (free_port(), free_port())
    text += (f"metrics: {{enabled: true, port: {ports[0]}, worker_port: {ports[1]}, tensorboard: true}}\n" if on
             else "metrics: {enabled: false, tensorboard: false}\n")
    path = workdir / ("on.yaml" if on else "off.yaml")
    path.write_text(text)
    return path, ports


def scraper(ports, stop):
    while not stop.is_set():
        for p in ports:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{p}/metrics", timeout=2).read()
            except OSError:
                pass  # not serving yet, or done
        stop.wait(1.0)


def run(workdir, on, failures):
    config, ports = demo_config(workdir, on)
    stop = threading.Event()
    t = threading.Thread(target=scraper, args=(ports, stop))
    if on:
        t.start()
    out = subprocess.run([str(HERD), "train", str(config)], capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    stop.set()
    if on:
        t.join()
    if out.returncode != 0:
        failures.append(f"{'on' if on else 'off'}: exit {out.returncode}\n{out.stderr[-2000:]}")
        return [], 0.0
    records = [json.loads(l) for l in (workdir / "trainer_outputs" / "events.jsonl").read_text().splitlines()]
    steps = [r["seconds"] for r in records if r["event"] == "step"]
    done = next(r for r in records if r["event"] == "done")
    return steps[20:], done["export_seconds"] / sum(steps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench-metrics")
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(HERD), "tools", "make-tiny-model", str(a.workdir / "tiny-llama"), *SPEC], check=True,
                   capture_output=True)
    failures, shares, ratios = [], [], []
    for r in range(a.rounds):
        medians = {}
        for on in ((False, True) if r % 2 == 0 else (True, False)):  # either order, half the rounds each
            got, share = run(a.workdir, on, failures)
            if not got:
                continue
            medians[on] = statistics.median(got)
            line = f"round {r + 1} metrics {'on ' if on else 'off'}: {len(got)} steps, median {1e3 * medians[on]:.3f} ms"
            if on:
                shares.append(share)
                line += f", exporting {100 * share:.3f} % of step time"
            print(line, flush=True)
        if len(medians) == 2:
            ratios.append(medians[True] / medians[False])
    for f in failures:
        print("FAILED", f)
    if not shares or not ratios:
        sys.exit(1)
    print(f"exporting on the training thread: {100 * statistics.median(shares):.3f} % of step time (median of "
          f"{len(shares)} runs, {100 * min(shares):.3f}-{100 * max(shares):.3f} %); target under 1 %")
    print(f"median step, on over off: {100 * (statistics.median(ratios) - 1):+.2f} % (median of {len(ratios)} pairs, "
          f"{100 * (min(ratios) - 1):+.2f} to {100 * (max(ratios) - 1):+.2f} %)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
