"""`herd train`: a local run over the sample conversations on a tiny model made here."""
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from runs import events, free_port, losses

BIN = Path(os.environ["HERD_BIN"])
SRC = Path(os.environ["HERD_SOURCE_DIR"])
def herd(*args):
    return subprocess.run([str(BIN / "herd"), *map(str, args)], capture_output=True, text=True, timeout=240)


def write_config(path, model, out, quantize=True, world_size=1, extra=""):
    path.write_text(f"""model_name: t
base_model: {model}
model_context_window: 128
data: {{type: vicuna, dataset: {SRC / 'data' / 'sample-vicuna.json'}}}
lora: {{r: 8, lora_alpha: 16, target_modules: all-linear, lora_dropout: 0.05, bias: none, task_type: CAUSAL_LM}}
trainer: {{device: cpu, batch_size: 2, gradient_accumulation_steps: 2, warmup_steps: 3, num_train_epochs: 1, max_steps: 24,
          learning_rate: 0.01, logging_steps: 1, seed: 7}}
trainer_output_dir: {out}/trainer
model_output_dir: {out}/models
quantization: {{enabled: {'true' if quantize else 'false'}, compute_dtype: float32}}
distributed: {{world_size: {world_size}}}
metrics: {{enabled: false}}
""" + extra)
    return path


def test_train_logs_every_step_writes_the_adapter_and_is_deterministic(model, tmp_path):
    for i in range(2):
        config = write_config(tmp_path / f"c{i}.yaml", model, tmp_path / f"run{i}")
        out = herd("train", config)
        assert out.returncode == 0, out.stderr
        adapter = tmp_path / f"run{i}" / "models" / "t_adapter"
        assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
        [done] = events(tmp_path / f"run{i}", "done")
        assert done["adapter"] == str(adapter) and done["steps"] == 24 and done["tokens"] > 0
        assert done["peak_memory_bytes"] > 0 and done["seconds"] > 0
    first = events(tmp_path / "run0")
    assert [r["step"] for r in first] == list(range(1, 25))
    assert all(r["rank"] == 0 and r["world_size"] == 1 and r["attempt"] == 1 for r in first)
    assert losses(tmp_path / "run0") == losses(tmp_path / "run1")
    weights = [(tmp_path / f"run{i}" / "models" / "t_adapter" / "adapter_model.safetensors").read_bytes()
               for i in range(2)]
    assert weights[0] == weights[1]
    # The linear schedule: 0 at the first step (warmup), the peak after warmup, down to 0.01/21 at the last.
    lrs = [r["learning_rate"] for r in first]
    assert lrs[0] == 0 and lrs[3] == pytest.approx(0.01, rel=1e-12) and lrs[-1] == pytest.approx(0.01 / 21, rel=1e-12)
    # It learns: the last four steps' mean loss is below the first four's.
    loss = list(losses(tmp_path / "run0").values())
    assert sum(loss[-4:]) < sum(loss[:4])


def test_unquantized_base_trains_close_to_nf4(model, tmp_path):
    nf4 = herd("train", write_config(tmp_path / "q.yaml", model, tmp_path / "q"))
    dense = herd("train", write_config(tmp_path / "d.yaml", model, tmp_path / "d", quantize=False))
    assert nf4.returncode == 0 and dense.returncode == 0, nf4.stderr + dense.stderr
    assert "dense base weights" in dense.stdout and "NF4 base weights" in nf4.stdout
    a, b = losses(tmp_path / "q").values(), losses(tmp_path / "d").values()
    assert len(a) == len(b) == 24
    assert max(abs(x - y) for x, y in zip(a, b)) < 0.05


def test_more_than_one_worker_is_refused_clearly(model, tmp_path):
    out = herd("train", write_config(tmp_path / "w.yaml", model, tmp_path / "w", world_size=2))
    assert out.returncode == 1
    assert "herd train runs one local worker; distributed.world_size is 2" in out.stderr


def test_a_gpu_asked_for_where_none_is_visible_is_refused_clearly(model, tmp_path):
    if "GPUs visible: 0" not in herd("--version").stdout:
        pytest.skip("a GPU is visible here")
    config = write_config(tmp_path / "g.yaml", model, tmp_path / "g")
    config.write_text(config.read_text().replace("device: cpu", "device: cuda"))
    out = herd("train", config)
    assert out.returncode == 1
    assert "trainer.device: cuda wants GPU 0 (LOCAL_RANK) but no GPU is visible" in out.stderr


def test_the_demo_config_learns(tmp_path):
    """configs/tiny-demo.yaml on the model scripts/demo makes: the last logged loss is at least 30% below the first."""
    model = tmp_path / "tiny-llama"
    out = herd("tools", "make-tiny-model", model, "--layers", "2", "--hidden", "64", "--heads", "4", "--kv-heads", "2",
               "--intermediate", "128", "--seed", "0", "--init-std", "0.1")
    assert out.returncode == 0, out.stderr
    text = (SRC / "configs" / "tiny-demo.yaml").read_text()
    config = tmp_path / "demo.yaml"
    config.write_text(text.replace("build/demo/tiny-llama", str(model))
                      .replace("data/sample-vicuna.json", str(SRC / "data" / "sample-vicuna.json"))
                      .replace("build/demo/", f"{tmp_path}/")
                      .replace("  enabled: true", f"  enabled: true\n  port: {free_port()}\n  worker_port: {free_port()}"))
    out = herd("train", config)
    assert out.returncode == 0, out.stderr
    every = [r["loss"] for r in events(tmp_path, trainer_dir="trainer_outputs")]
    assert len(every) == 570  # 228 train conversations (12 held out), 4 a step, 10 epochs
    logged = [sum(every[i:i + 20]) / 20 for i in range(0, 560, 20)]  # what the log shows: logging_steps 20
    assert logged[-1] <= 0.7 * logged[0], (logged[0], logged[-1])
    adapter_dir = tmp_path / "models" / "tiny-demo_adapter"
    assert (adapter_dir / "adapter_model.safetensors").exists()

    # herd eval CONFIG --adapter: the trainer's last eval (the same held-out split), on the same path.
    last = events(tmp_path, "eval", trainer_dir="trainer_outputs")[-1]
    assert last["step"] == 570 and last["samples"] == 12
    out = herd("eval", config, "--adapter", adapter_dir, "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["samples"] == 12 and got["split"] == "eval split (data.eval_fraction 0.05, seed 42)"
    assert abs(got["loss"] - last["eval_loss"]) <= 1e-6, (got["loss"], last["eval_loss"])
    base = json.loads(herd("eval", config, "--json").stdout)
    assert base["tokens"] == got["tokens"] and base["loss"] > got["loss"] + 0.5  # the adapter learned something
    # A data file of another type is refused, naming what it holds.
    orca = tmp_path / "orca.jsonl"
    orca.write_text(json.dumps({"system_prompt": "", "question": "q", "response": "r"}) + "\n")
    out = herd("eval", config, "--adapter", adapter_dir, "--data", orca)
    assert out.returncode == 1
    assert f"herd eval: {orca}: record 0: no \"conversations\" or \"messages\" key: it is an Orca record " \
        "(question, response), " \
        "which data.type orca reads, and this data is read as data.type vicuna" in out.stderr, out.stderr
    out = herd("eval", config, "--no-quantize")
    assert out.returncode == 1 and "--no-quantize picks how a model directory is loaded" in out.stderr, out.stderr


def run_until(config, step, sig):
    """`herd train` stopped by `sig` once it has logged `step`."""
    p = subprocess.Popen([str(BIN / "herd"), "train", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    out = []
    for line in p.stdout:
        out.append(line)
        if line.startswith(f"step {step}/"):
            p.send_signal(sig)
    p.wait(timeout=60)
    return p.returncode, "".join(out)


def history(run_dir, step):
    state = json.loads((run_dir / "trainer" / f"checkpoint-{step}" / "trainer_state.json").read_text())
    return [(h["step"], h["loss"], h["learning_rate"]) for h in state["log_history"]]


CHECKPOINTS = "checkpoint: {every_steps: 5, keep_last: 2}\n"


@pytest.fixture(scope="module")
def uninterrupted(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("whole")
    out = herd("train", write_config(d / "c.yaml", model, d, extra=CHECKPOINTS))
    assert out.returncode == 0, out.stderr
    return d


def checkpoints(run_dir):
    return sorted(int(p.name.split("-")[1]) for p in (run_dir / "trainer").glob("checkpoint-*"))


def test_a_signal_stops_at_a_checkpoint_and_resume_gives_the_same_run(model, tmp_path, uninterrupted):
    config = write_config(tmp_path / "c.yaml", model, tmp_path, extra=CHECKPOINTS)
    rc, out = run_until(config, 13, signal.SIGTERM)
    assert rc == 130, out
    # It stops at the next step boundary (after 13, or later if this test read the log late) with a checkpoint.
    [interrupted] = events(tmp_path, "interrupted")
    stopped = interrupted["step"]
    assert interrupted["checkpoint"] == stopped and 13 <= stopped < 24
    assert checkpoints(tmp_path) == sorted({s for s in (5, 10, 15, 20) if s <= stopped} | {stopped})[-2:]
    resumed = herd("train", config, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {tmp_path / 'trainer' / f'checkpoint-{stopped}'} (step {stopped})" in resumed.stdout
    assert [r["step"] for r in events(tmp_path)] == list(range(1, 25))
    assert [r["attempt"] for r in events(tmp_path)] == [1] * stopped + [2] * (24 - stopped)
    assert losses(tmp_path) == losses(uninterrupted)
    # The whole loss history (dropout on: the RNG is restored too) and the adapter, to the bit.
    assert history(tmp_path, 24) == history(uninterrupted, 24)
    adapter = Path("models") / "t_adapter" / "adapter_model.safetensors"
    assert (tmp_path / adapter).read_bytes() == (uninterrupted / adapter).read_bytes()


def test_resume_skips_damaged_checkpoints_with_a_warning(model, tmp_path, uninterrupted):
    config = write_config(tmp_path / "c.yaml", model, tmp_path, extra=CHECKPOINTS)
    rc, _ = run_until(config, 13, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    trainer = tmp_path / "trainer"
    older, newest = checkpoints(tmp_path)  # keep_last 2
    # The newest: a truncated tensor file; one above it that the coordinator never committed: not a candidate.
    weights = trainer / f"checkpoint-{newest}" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    (trainer / f"checkpoint-{newest + 2}").mkdir()
    (trainer / f"checkpoint-{newest + 2}" / "adapter_config.json").write_text("{}")
    resumed = herd("train", config, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"warning: skipping {trainer / f'checkpoint-{newest}'}: adapter_model.safetensors has" in resumed.stderr
    assert f"checkpoint-{newest + 2}" not in resumed.stdout + resumed.stderr
    assert f"resuming from {trainer / f'checkpoint-{older}'} (step {older})" in resumed.stdout
    assert history(tmp_path, 24) == history(uninterrupted, 24)


def test_activation_checkpointing_changes_memory_not_numbers(model, tmp_path):
    """trainer.gradient_checkpointing (on by default) recomputes each layer in backward, dropout draws included."""
    on = herd("train", write_config(tmp_path / "on.yaml", model, tmp_path / "on"))
    config = write_config(tmp_path / "off.yaml", model, tmp_path / "off")
    config.write_text(config.read_text().replace("seed: 7}", "seed: 7, gradient_checkpointing: false}"))
    off = herd("train", config)
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    assert losses(tmp_path / "on") == losses(tmp_path / "off")
    a, b = (tmp_path / r / "models" / "t_adapter" / "adapter_model.safetensors" for r in ("on", "off"))
    from safetensors.numpy import load_file
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    assert max(float(abs(ta[k] - tb[k]).max()) for k in ta) < 1e-6


def test_a_chunked_loss_changes_memory_not_numbers(model, tmp_path):
    """trainer.loss_chunk_tokens: the loss over 7 positions at a time trains as the whole rows' loss does."""
    whole = herd("train", write_config(tmp_path / "whole.yaml", model, tmp_path / "whole"))
    config = write_config(tmp_path / "chunked.yaml", model, tmp_path / "chunked")
    config.write_text(config.read_text().replace("seed: 7}", "seed: 7, loss_chunk_tokens: 7}"))
    chunked = herd("train", config)
    assert whole.returncode == 0 and chunked.returncode == 0, whole.stderr + chunked.stderr
    assert losses(tmp_path / "chunked") == pytest.approx(losses(tmp_path / "whole"), rel=1e-5)
    from safetensors.numpy import load_file
    a, b = (load_file(str(tmp_path / r / "models" / "t_adapter" / "adapter_model.safetensors"))
            for r in ("whole", "chunked"))
    assert a.keys() == b.keys()
    assert max(float(abs(a[k] - b[k]).max()) for k in a) < 1e-5


def test_offloading_activations_on_the_cpu_is_refused_clearly(model, tmp_path):
    config = write_config(tmp_path / "o.yaml", model, tmp_path / "o")
    config.write_text(config.read_text().replace("seed: 7}", "seed: 7, offload_activations: true}"))
    out = herd("train", config)
    assert out.returncode == 1
    assert "trainer.offload_activations moves activations from a GPU to host memory, and this worker trains on " \
           "the CPU" in out.stderr


def test_eval_loss_on_the_held_out_split(model, tmp_path):
    config = write_config(tmp_path / "c.yaml", model, tmp_path)
    text = config.read_text().replace("sample-vicuna.json}", "sample-vicuna.json, eval_fraction: 0.1}")
    config.write_text(text.replace("seed: 7}", "seed: 7, eval_steps: 8}"))
    out = herd("train", config)
    assert out.returncode == 0, out.stderr
    evals = events(tmp_path, "eval")
    assert [(r["step"], r["samples"]) for r in evals] == [(8, 24), (16, 24), (24, 24)]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]


def test_the_step_benchmark_runs_the_trainers_step(model, tmp_path):
    """bench/train_step --config trains the config's model on the batches herd train gets, through
    the trainer's own step: the same loss and gradient norm at every step, to the bit."""
    config = write_config(tmp_path / "c.yaml", model, tmp_path)
    out = herd("train", config)
    assert out.returncode == 0, out.stderr
    bench = subprocess.run([str(BIN / "herd_bench_train_step"), "--config", str(config), "--steps", "6"],
                           capture_output=True, text=True, timeout=240)
    assert bench.returncode == 0, bench.stderr
    steps = [json.loads(l) for l in bench.stdout.splitlines() if l.startswith("{")]
    assert [s["step"] for s in steps] == list(range(1, 7))
    trained = events(tmp_path)[:6]
    assert [(s["loss"], s["grad_norm"], s["tokens"]) for s in steps] == \
        [(r["loss"], r["grad_norm"], r["tokens"]) for r in trained]
