"""The built binaries, run as a user runs them."""
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

BIN = Path(os.environ["HERD_BIN"])
SRC = Path(os.environ["HERD_SOURCE_DIR"])
PYTHON = os.environ["HERD_PYTHON"]
SEED = SRC / "configs" / "llama2_70b_chat_uncensored.yaml"


def herd(*args, env=None, cwd=SRC):
    return subprocess.run([str(BIN / "herd"), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def test_version_names_the_libtorch_it_was_built_with():
    out = herd("--version")
    assert out.returncode == 0, out.stderr
    torch_version = subprocess.run([PYTHON, "-c", "import torch; print(torch.__version__.split('+')[0])"],
                                   capture_output=True, text=True, check=True).stdout.strip()
    lines = out.stdout.splitlines()
    assert lines[0].startswith("herd 0.1.0 (git ")
    assert f"libtorch {torch_version}" in lines
    assert any(l.startswith("CUDA compiled in: ") for l in lines)
    assert any(l.startswith("GPUs visible: ") for l in lines)
    # The revision stamped at build time is a commit of this repository.
    revision = lines[0].split("(git ")[1].rstrip(")").removesuffix("-dirty")
    if subprocess.run(["git", "-C", str(SRC), "rev-parse", "HEAD"], capture_output=True).returncode == 0:
        assert subprocess.run(["git", "-C", str(SRC), "cat-file", "-e", revision + "^{commit}"]).returncode == 0


def test_config_check_shows_the_seeds_values_and_origins():
    out = herd("config", "check", SEED)
    assert out.returncode == 0, out.stderr
    rows = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            rows[parts[0]] = (parts[1], parts[-1])
    assert rows["lora.r"] == ("8", f"{SEED}:9")
    assert rows["lora.lora_alpha"] == ("32", f"{SEED}:10")
    assert rows["trainer.learning_rate"] == ("0.0001", f"{SEED}:23")
    assert rows["trainer.num_train_epochs"] == ("3", f"{SEED}:22")
    assert rows["quantization.quant_type"] == ('"nf4"', "default")
    assert rows["trainer.max_grad_norm"] == ("1", "default")
    assert "lora scaling          4 (lora_alpha / r)" in out.stdout
    assert "models/llama2_70b_chat_uncensored_adapter" in out.stdout
    assert out.stdout.rstrip().endswith("config ok")


def test_config_check_json():
    import json
    out = herd("config", "check", "--json", SEED)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    values = {v["key"]: v for v in doc["values"]}
    assert values["lora.target_modules"]["value"] == "[q_proj, k_proj, v_proj]"
    assert values["data.response_header"] == {"key": "data.response_header", "value": '"### RESPONSE:\\n"',
                                              "origin": "default"}
    assert doc["derived"]["global_batch"] == 4
    assert doc["paths"]["base_model"]["ref"] == "TheBloke/Llama-2-70B-fp16"


def test_config_check_reports_every_error_and_fails(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SEED.read_text().replace("  r: 8\n", "  r: 0\n").replace("  batch_size: 1\n",
                                                                           "  batchsize: 1\n"))
    out = herd("config", "check", bad)
    assert out.returncode == 1
    assert f"{bad}:9:6: lora.r: must be >= 1, got 0" in out.stderr
    assert f"{bad}:19:3: trainer.batchsize: unknown key in section 'trainer'; did you mean 'batch_size'?" \
        in out.stderr
    assert "2 errors in config" in out.stderr  # the typo is not also reported as batch_size missing


def test_coordinator_links_no_libtorch_and_herd_does():
    def libraries(binary):
        out = subprocess.run(["ldd", str(BIN / binary)], capture_output=True, text=True, check=True).stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def torch_libraries(libs):
        return [l for l in libs if l.startswith(("libtorch", "libc10"))]

    coordinator = libraries("herd-coordinator")
    assert any(l.startswith("libgrpc++") for l in coordinator)
    assert torch_libraries(coordinator) == [], coordinator
    # The same check on `herd` finds libtorch: the test can tell the difference.
    assert "libtorch.so" in torch_libraries(libraries("herd"))


TOKEN = "integration-token-123"


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory):
    """A config over the sample conversations and a tiny model made here."""
    d = tmp_path_factory.mktemp("job")
    out = herd("tools", "make-tiny-model", d / "model", "--layers", "1", "--hidden", "32", "--heads", "2",
               "--kv-heads", "1", "--intermediate", "64")
    assert out.returncode == 0, out.stderr
    config = d / "job.yaml"
    config.write_text(f"""model_name: tiny-job
base_model: {d / 'model'}
model_context_window: 128
data: {{type: vicuna, dataset: {SRC / 'data' / 'sample-vicuna.json'}, eval_fraction: 0.1}}
lora: {{r: 4, lora_alpha: 8, target_modules: [q_proj], lora_dropout: 0, bias: none, task_type: CAUSAL_LM}}
trainer: {{device: cpu, batch_size: 2, gradient_accumulation_steps: 3, warmup_steps: 0, num_train_epochs: 2,
          learning_rate: 0.001, logging_steps: 1}}
trainer_output_dir: {d / 'out'}
model_output_dir: {d / 'models'}
distributed: {{world_size: 2}}
security: {{token_file: {d / 'token'}}}
metrics: {{enabled: false}}
""")
    (d / "token").write_text(TOKEN + "\n")
    return config


def start_coordinator(tiny_job, tmp_path, *flags):
    """herd-coordinator for the tiny job on a free loopback port: the process and HOST:PORT."""
    port_file = tmp_path / "port"
    proc = subprocess.Popen([str(BIN / "herd-coordinator"), "--config", str(tiny_job), "--listen", "127.0.0.1:0",
                             "--port-file", str(port_file), "--state-dir", str(tmp_path / "state"), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not port_file.exists() and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    return proc, f"127.0.0.1:{int(port_file.read_text())}"


@pytest.fixture
def coordinator(tiny_job, tmp_path):
    """A coordinator that serves after its job has ended (--stay, as a Deployment): yields HOST:PORT."""
    proc, address = start_coordinator(tiny_job, tmp_path, "--stay")
    try:
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert TOKEN not in out + err
        assert "herd-coordinator: plan: global batch 12 rows, epoch 0 tokens per rank per step: max/mean" in out


def token_env(**extra):
    return dict(os.environ, HERD_JOB_TOKEN=TOKEN, **extra)


def test_coordinator_tokenizes_the_job_and_serves_status(coordinator, tiny_job):
    # 240 conversations, 24 held out: 216 train, global batch 2 x 3 x 2 = 12 -> 18 steps per epoch.
    out = herd("status", "--coordinator", coordinator, env=token_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[:2] == [
        "job tiny-job: REGISTERING, attempt 0, step 0/36 (epoch 0), checkpoint 0",
        "workers: 0 alive, gang of 0 (world size 2), 0 spares, accumulation 3"]
    # The token can come from the job's config instead; JSON is the JobStatus message.
    out = herd("status", "--coordinator", coordinator, "--config", tiny_job, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["state"] == "REGISTERING" and doc["total_steps"] == "36" and doc["world_size"] == 2


def test_operators_drain_and_cancel(coordinator, tiny_job):
    out = herd("drain", "--coordinator", coordinator, env=token_env())
    assert out.returncode == 0, out.stderr
    # No gang yet: the last committed checkpoint (none) is where a restart resumes.
    assert out.stdout.strip() == "herd drain: the job is STOPPED"
    out = herd("status", "--coordinator", coordinator, "--config", tiny_job)
    assert "message: drained at checkpoint 0" in out.stdout
    out = herd("cancel", "--coordinator", coordinator, "--reason", "bad data", env=token_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "herd cancel: the job is FAILED"
    out = herd("status", "--coordinator", coordinator, env=token_env())
    assert out.stdout.startswith("job tiny-job: FAILED") and "message: cancelled: bad data" in out.stdout
    out = herd("cancel", "--coordinator", coordinator, env=token_env())
    assert out.returncode == 1 and "answered FAILED_PRECONDITION: the job is FAILED" in out.stderr


@pytest.mark.parametrize("operator, code, state", [("drain", 130, "STOPPED"), ("cancel", 1, "FAILED")])
def test_a_batch_coordinator_exits_when_its_job_ends(tiny_job, tmp_path, operator, code, state):
    """Without --stay, once the job has ended and every live worker knows it (here there are none),
    herd-coordinator exits: 130 for a drained job, 1 for a cancelled one (0 for DONE: test_distributed)."""
    proc, address = start_coordinator(tiny_job, tmp_path)
    try:
        out = herd(operator, "--coordinator", address, env=token_env())
        assert out.returncode == 0, out.stderr
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == code, out + err
    assert f"herd-coordinator: the job is {state}; every live worker knows; exiting {code}" in out


def test_status_with_a_wrong_or_missing_token_is_refused(coordinator, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token")
    out = herd("status", "--coordinator", coordinator, "--token-file", wrong)
    assert out.returncode == 1
    assert "answered UNAUTHENTICATED: wrong job token" in out.stderr
    out = herd("status", "--coordinator", coordinator, env={k: v for k, v in os.environ.items()
                                                            if k != "HERD_JOB_TOKEN"})
    assert out.returncode == 1
    assert "no job token" in out.stderr


def test_config_check_never_prints_the_token(tiny_job, tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text(tiny_job.read_text().replace("security: {token_file:", "security: {token: hunter2-token, x:"))
    out = herd("config", "check", config)
    assert out.returncode == 1 and "security.x: unknown key" in out.stderr
    config.write_text("".join(l for l in tiny_job.read_text().splitlines(True) if not l.startswith("security:"))
                      + "security: {token: hunter2-token}\n")
    out = herd("config", "check", config)
    assert out.returncode == 0, out.stderr
    assert "hunter2" not in out.stdout and "<redacted>" in out.stdout


def test_coordinator_needs_a_token(tiny_job, tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("".join(l for l in tiny_job.read_text().splitlines(True) if not l.startswith("security:")))
    out = subprocess.run([str(BIN / "herd-coordinator"), "--config", str(config), "--listen", "127.0.0.1:0"],
                         capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "HERD_JOB_TOKEN"})
    assert out.returncode == 1
    assert "herd-coordinator: no job token" in out.stderr


def test_worker_with_a_malformed_environment_fails_clearly():
    env = dict(os.environ, RANK="x", WORLD_SIZE="2")
    out = herd("worker", SEED, env=env)
    assert out.returncode == 1
    assert out.stderr.strip() == "herd worker: RANK=x is not an integer >= 0"


def test_status_of_a_missing_coordinator_fails_clearly():
    out = herd("status", "--coordinator", "127.0.0.1:1", env=token_env())
    assert out.returncode == 1
    assert "coordinator 127.0.0.1:1 answered" in out.stderr


@pytest.mark.parametrize("sub", ["train", "worker", "config", "status", "drain", "cancel", "merge", "chat",
                                 "quantize", "eval", "plan", "data", "tools"])
def test_every_subcommand_has_help(sub):
    out = herd(sub, "--help")
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout or "usage" in out.stdout.lower()


def test_plan_for_the_seed_on_one_and_many_gpus():
    # The seed's base model is not here: its published shape is used, and said so.
    out = herd("plan", SEED, "--gpu-mem", "80GiB")
    assert out.returncode == 0, out.stderr
    assert "shape: Llama-2-70B (base_model is not on this machine" in out.stdout
    assert re.search(r"LoRA: 22282240 parameters.* 0\.33 GiB", out.stdout)
    total = float(re.search(r"per rank +([\d.]+) GiB", out.stdout).group(1))
    assert 45 < total < 55 and "fits in 80.0 GiB per GPU" in out.stdout
    eight = herd("plan", SEED, "--workers", "8", "--gpu-mem", "80GiB")
    assert float(re.search(r"per rank +([\d.]+) GiB", eight.stdout).group(1)) < total / 2
    two = herd("plan", SEED, "--workers", "2", "--gpu-mem", "24GB")
    assert "does not fit in 22.4 GiB per GPU" in two.stdout
    assert "with every memory feature on:" in two.stdout  # 4,096-token rows: still over


def test_plan_says_which_memory_features_fit_the_seed_on_two_24gb_gpus(tmp_path):
    plan = json.loads(herd("plan", SEED, "--workers", "2", "--gpu-mem", "24GB", "--tokens", "2048", "--json").stdout)
    assert not plan["fits"]
    fit = plan["to_fit"]
    assert fit["changes"] == {"trainer.loss_chunk_tokens": "1024", "trainer.bf16": "true",
                              "trainer.offload_activations": "true"}
    assert fit["fits"] and 0.95 * 24e9 < fit["total_bytes"] < 24e9
    # The seed's YAML with those keys set plans what the advice said, and fits.
    changed = tmp_path / "seed.yaml"
    changed.write_text(SEED.read_text().replace(
        "  logging_steps: 20\n", "  logging_steps: 20\n  loss_chunk_tokens: 1024\n  bf16: true\n  offload_activations: true\n"))
    again = json.loads(herd("plan", changed, "--workers", "2", "--gpu-mem", "24GB", "--tokens", "2048", "--json").stdout)
    assert again["fits"] and "to_fit" not in again
    assert again["total_bytes"] == pytest.approx(fit["total_bytes"])
    bad = herd("plan", SEED, "--gpu-mem", "lots")
    assert bad.returncode == 1 and "--gpu-mem 'lots' is not a size" in bad.stderr


def test_coordinator_help_and_bad_config(tmp_path):
    out = subprocess.run([str(BIN / "herd-coordinator"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--config" in out.stdout
    bad = tmp_path / "c.yaml"
    bad.write_text("model_name: x\n")
    out = subprocess.run([str(BIN / "herd-coordinator"), "--config", str(bad)], capture_output=True, text=True)
    assert out.returncode == 1
    assert "base_model: missing required key" in out.stderr


def test_train_dry_run_on_the_demo_config():
    out = herd("train", "configs/tiny-demo.yaml", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "dry run: config ok; a training run would write the adapter to build/demo/models/tiny-demo_adapter" \
        in out.stdout


def test_train_names_every_path_tried_for_a_missing_model(tmp_path):
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"))
    out = herd("train", SEED, env=env)
    assert out.returncode == 1
    assert "base_model TheBloke/Llama-2-70B-fp16 was not found" in out.stderr
    assert str(tmp_path / "hub" / "models--TheBloke--Llama-2-70B-fp16" / "refs" / "main") in out.stderr
    assert "huggingface-cli download TheBloke/Llama-2-70B-fp16" in out.stderr


def test_train_finds_a_model_in_the_hub_cache(tmp_path):
    hub = tmp_path / "hub"
    for kind, name in [("models", "TheBloke--Llama-2-70B-fp16"), ("datasets", "ehartford--wizard_vicuna_70k_unfiltered")]:
        (hub / f"{kind}--{name}" / "refs").mkdir(parents=True)
        (hub / f"{kind}--{name}" / "refs" / "main").write_text("abc123")
        (hub / f"{kind}--{name}" / "snapshots" / "abc123").mkdir(parents=True)
    env = dict(os.environ, HF_HUB_CACHE=str(hub))
    out = herd("config", "check", SEED, env=env)
    assert f"TheBloke/Llama-2-70B-fp16 -> {hub}/models--TheBloke--Llama-2-70B-fp16/snapshots/abc123" in out.stdout


def test_std_filesystem_is_never_bound_to_libtorch(tmp_path):
    """libtorch_cpu.so exports its own std::filesystem; herd must use the compiler's
    (a shared libstdc++ ahead of libtorch, or a static one inside the binary), or a
    GCC mismatch crashes it. make-tiny-model calls std::filesystem functions."""
    env = dict(os.environ, LD_DEBUG="bindings", LD_DEBUG_OUTPUT=str(tmp_path / "ld"))
    out = herd("tools", "make-tiny-model", tmp_path / "m", "--layers", "1", env=env)
    assert out.returncode == 0, out.stderr
    bindings = "".join(p.read_text() for p in tmp_path.glob("ld.*"))
    to_torch = [l for l in bindings.splitlines() if "_ZNSt10filesystem" in l and "torch" in l.split(" to ")[-1]]
    assert "binding file" in bindings and to_torch == [], to_torch[:3]
