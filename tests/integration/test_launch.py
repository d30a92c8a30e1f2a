"""Every launch mode builds the same coordinator server and trains the same job: `herd train`,
`herd train --workers 2`, herd-coordinator + 2 `herd worker`, `mpirun -np 2`, torchrun's, SLURM's
and Kubeflow Trainer's variables, and a Kubernetes Indexed Job's JOB_COMPLETION_INDEX. With a
config that sets TLS and metrics, each coordinator serves TLS only, answers the gRPC health
check and serves /metrics; each run gives the one-worker run's losses (read from events.jsonl)
and adapter. SIGINT to `herd train --workers 2` and to `mpirun` stops every rank at a committed
checkpoint (exit 130), and --resume gives the uninterrupted run."""
import concurrent.futures
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from runs import adapter, events, free_port, losses

BIN = Path(os.environ["HERD_BIN"])
SRC = Path(os.environ["HERD_SOURCE_DIR"])
TOKEN = "launch-test-token"
STEPS = 16
LOSS_RTOL, ADAPTER_ATOL = 1e-5, 2e-5  # sums over ranks round in another order than one rank's accumulation


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(d / "key.pem"), "-out",
                    str(d / "cert.pem")], check=True, capture_output=True)
    (d / "token").write_text(TOKEN + "\n")
    return d


def config(d, model, tls, ranks, secure=True, steps=STEPS):
    """Global batch 2 x (4 / ranks) x ranks; dropout 0 so that ranks draw nothing."""
    security = (f"security: {{token_file: {tls / 'token'}, tls_cert: {tls / 'cert.pem'}, tls_key: {tls / 'key.pem'}, "
                f"tls_ca: {tls / 'cert.pem'}, tls_server_name: localhost}}\nmetrics: {{enabled: true, port: {free_port()}, worker_port: 0}}\n"
                if secure else "metrics: {enabled: false}\n")
    path = d / "c.yaml"
    path.write_text(f"""model_name: t
base_model: {model}
model_context_window: 128
data: {{type: vicuna, dataset: {SRC / 'data' / 'sample-vicuna.json'}}}
lora: {{r: 8, lora_alpha: 16, target_modules: all-linear, lora_dropout: 0.0, bias: none, task_type: CAUSAL_LM}}
trainer: {{device: cpu, batch_size: 2, gradient_accumulation_steps: {4 // ranks}, warmup_steps: 3, num_train_epochs: 1,
          max_steps: {steps}, learning_rate: 0.01, logging_steps: 1, seed: 7}}
trainer_output_dir: {d}/trainer
model_output_dir: {d}/models
quantization: {{enabled: true, compute_dtype: float32}}
checkpoint: {{every_steps: 8}}
distributed: {{world_size: {ranks}}}
""" + security)
    return path


def herd(*args, env=None, timeout=60):
    return subprocess.run([str(BIN / "herd"), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env)


def env(**extra):
    return dict(os.environ, OMP_NUM_THREADS="1", **{k: str(v) for k, v in extra.items()})


def endpoint(d, procs, timeout=60):
    """The hosted coordinator's port and metrics port, once it serves."""
    path = d / "trainer" / "coordinator" / "endpoint.json"
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline and all(p.poll() is None for p in procs), [p.poll() for p in procs]
        time.sleep(0.02)
    e = json.loads(path.read_text())
    return e["port"], e["metrics_port"]


def probe(port, metrics_port, cfg, tls):
    """The coordinator on `port` answers over TLS only, says SERVING and serves /metrics."""
    address = f"127.0.0.1:{port}"
    with concurrent.futures.ThreadPoolExecutor() as pool:
        health = pool.submit(herd, "status", "--coordinator", address, "--config", cfg, "--health", "--json")
        secure = pool.submit(herd, "status", "--coordinator", address, "--config", cfg, "--json")
        plain = pool.submit(herd, "status", "--coordinator", address, "--token-file", tls / "token")
        metrics = pool.submit(lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                                             timeout=10).read().decode())
        health, secure, plain, metrics = health.result(), secure.result(), plain.result(), metrics.result()
    assert health.returncode == 0 and json.loads(health.stdout) == {"health": "SERVING"}, health.stderr
    assert secure.returncode == 0 and json.loads(secure.stdout)["job_id"] == "t", secure.stderr
    assert plain.returncode == 1 and f"coordinator {address} answered UNAVAILABLE" in plain.stderr, plain.stderr
    assert "herd_job_state{state=\"RUNNING\"}" in metrics


def assert_same(d, reference, exact=False, adapter_atol=ADAPTER_ATOL):
    loss, ref_loss = losses(d), losses(reference)
    assert sorted(loss) == sorted(ref_loss) == list(range(1, max(ref_loss) + 1))
    weights, ref_weights = adapter(d), adapter(reference)
    assert weights.keys() == ref_weights.keys()
    for step in ref_loss:
        assert loss[step] == (ref_loss[step] if exact else pytest.approx(ref_loss[step], rel=LOSS_RTOL)), step
    for k in ref_weights:
        assert (weights[k] - ref_weights[k]).abs().max().item() <= (0 if exact else adapter_atol), k


@pytest.fixture(scope="module")
def reference(model, tls, tmp_path_factory):
    """Today's one-worker run: `herd train`, no TLS, no metrics."""
    d = tmp_path_factory.mktemp("reference")
    out = herd("train", config(d, model, tls, 1, secure=False), timeout=300)
    assert out.returncode == 0, out.stderr
    return d


def finish(procs, timeout=300):
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    return [p.returncode for p in procs], outs


def wait_for_step(d, proc, step):
    deadline = time.time() + 120
    while max(losses(d), default=0) < step:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.005)


def children(pid):
    return [int(c) for c in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]


def test_herd_train_two_workers_stopped_by_sigint_and_resumed(model, tls, reference, tmp_path):
    """Once a step is trained, both worker processes pause (SIGSTOP) while the coordinator, which
    lives in the supervisor, is probed and the supervisor gets SIGINT; they continue, every rank
    stops at the step it is in with a committed checkpoint (exit 130), and --resume gives the
    uninterrupted run."""
    d, cfg = tmp_path, config(tmp_path, model, tls, 2)
    command = [str(BIN / "herd"), "train", str(cfg), "--workers", "2"]
    p = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(),
                         start_new_session=True)
    try:
        port, metrics_port = endpoint(d, [p])
        wait_for_step(d, p, 1)
        paused = children(p.pid)
        assert paused
        for pid in paused:
            os.kill(pid, signal.SIGSTOP)
        probe(port, metrics_port, cfg, tls)
        p.send_signal(signal.SIGINT)
        time.sleep(0.5)  # the launcher passes it on
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
        codes, outs = finish([p])
    finally:
        if p.poll() is None:  # a failed assertion: leave no process behind
            os.killpg(p.pid, signal.SIGKILL)
    assert codes == [130] and len(events(d, "interrupted")) == 1, outs
    assert f"to resume: `herd train {cfg} --resume`" in outs[0], outs  # what resumes in this launch mode
    check_stopped_and_resume(d, reference, command + ["--resume"])


def check_stopped_and_resume(d, reference, resume, adapter_atol=ADAPTER_ATOL):
    """One interrupted record at a committed checkpoint; `resume` gives the uninterrupted run."""
    [stopped] = events(d, "interrupted")
    assert stopped["checkpoint"] == stopped["step"] and 1 <= stopped["step"] < max(losses(reference))
    checkpoint = d / "trainer" / f"checkpoint-{stopped['step']}"
    assert (checkpoint / "checkpoint.json").exists()
    again = subprocess.run(resume, capture_output=True, text=True, timeout=300, env=env())
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resuming from {checkpoint} (step {stopped['step']})" in again.stdout
    assert {r["attempt"] for r in events(d) if r["step"] > stopped["step"]} == {2}  # trained after the resume
    assert_same(d, reference, adapter_atol=adapter_atol)


# Steps of the long runs: long enough to be probed while it trains, and for mpirun's SIGTERM, which
# comes a second after the SIGINT, to find it still going (it stops near step 100 here). Over this
# many steps the ranks' other summation order moves the adapter by up to 1e-4.
LONG = 300


@pytest.fixture(scope="module")
def long_reference(model, tls, tmp_path_factory):
    d = tmp_path_factory.mktemp("long")
    out = herd("train", config(d, model, tls, 1, secure=False, steps=LONG), timeout=300)
    assert out.returncode == 0, out.stderr
    return d


def test_herd_train(model, tls, long_reference, tmp_path):
    """One worker in the process that hosts the coordinator: probed while it trains (a long run), and
    a rerun of the reference's mode, so equal to the bit."""
    cfg = config(tmp_path, model, tls, 1, steps=LONG)
    p = subprocess.Popen([str(BIN / "herd"), "train", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=env())
    probe(*endpoint(tmp_path, [p]), cfg, tls)
    codes, outs = finish([p])
    assert codes == [0], outs
    assert_same(tmp_path, long_reference, exact=True)


def test_mpirun_stopped_by_sigint_and_relaunched(model, tls, long_reference, tmp_path):
    """mpirun answers SIGINT by aborting the job: SIGTERM to every rank odls_base_sigkill_timeout
    seconds later (1 unless told), SIGKILL as long again after that. The ranks stop at a committed
    checkpoint in that time; mpirun itself exits non-zero (a job it aborted). Relaunched, the job
    resumes from its journal."""
    cfg = config(tmp_path, model, tls, 2, steps=LONG)
    command = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", "-x", "OMP_NUM_THREADS=1",
               str(BIN / "herd"), "worker", str(cfg)]
    p = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(),
                         start_new_session=True)
    try:
        probe(*endpoint(tmp_path, [p]), cfg, tls)
        wait_for_step(tmp_path, p, 1)
        p.send_signal(signal.SIGINT)
        codes, outs = finish([p])
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert codes != [0] and len(events(tmp_path, "interrupted")) == 1, outs
    assert "to resume: run the same mpirun line again" in outs[0], outs
    stopped = events(tmp_path, "interrupted")[0]["step"]
    print(f"mpirun: SIGINT after step 1, stopped after step {stopped}")
    check_stopped_and_resume(tmp_path, long_reference, command, adapter_atol=1e-4)


def hosted_by_rank_zero(d, cfg, tls, variables):
    """Two `herd worker` processes with a launcher's variables: rank 0 starts first and hosts the
    coordinator; it is probed before rank 1 exists (so the job waits for its gang meanwhile)."""
    zero = subprocess.Popen([str(BIN / "herd"), "worker", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env(**variables(0)))
    probe(*endpoint(d, [zero]), cfg, tls)
    one = subprocess.Popen([str(BIN / "herd"), "worker", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, env=env(**variables(1)))
    return finish([zero, one])


@pytest.mark.parametrize("launcher", ["torchrun", "slurm", "kubeflow"])
def test_launcher_variables(model, tls, reference, tmp_path, launcher):
    cfg = config(tmp_path, model, tls, 2)
    port = free_port()
    variables = {
        "torchrun": lambda r: dict(RANK=r, WORLD_SIZE=2, LOCAL_RANK=0, MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
        "slurm": lambda r: dict(SLURM_PROCID=r, SLURM_NTASKS=2, SLURM_LOCALID=0, SLURM_JOB_ID=7,
                                SLURM_STEP_NODELIST="localhost", MASTER_PORT=port),
        "kubeflow": lambda r: dict(PET_NNODES=2, PET_NPROC_PER_NODE=1, PET_NODE_RANK=r, PET_MASTER_ADDR="127.0.0.1",
                                   PET_MASTER_PORT=port),
    }[launcher]
    codes, outs = hosted_by_rank_zero(tmp_path, cfg, tls, variables)
    assert codes == [0, 0], outs
    assert f"launched by {launcher} (rank 0 of 2)" in outs[0] and "(hosted here)" in outs[0]
    assert_same(tmp_path, reference)


@pytest.mark.parametrize("indexed_job", [False, True])
def test_herd_coordinator_and_two_workers(model, tls, reference, tmp_path, indexed_job):
    """Workers given the coordinator by flag, or as a Kubernetes Indexed Job's pods (JOB_COMPLETION_INDEX
    and HERD_COORDINATOR, no config: they fetch the coordinator's)."""
    cfg = config(tmp_path, model, tls, 2)
    port_file, health_port = tmp_path / "port", free_port()
    coordinator = subprocess.Popen([str(BIN / "herd-coordinator"), "--config", str(cfg), "--listen", "127.0.0.1:0",
                                    "--port-file", str(port_file), "--health-listen", f"127.0.0.1:{health_port}"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while not port_file.exists():
            assert time.time() < deadline and coordinator.poll() is None
            time.sleep(0.02)
        port = int(port_file.read_text())
        metrics_port = yaml.safe_load(cfg.read_text())["metrics"]["port"]
        probe(port, metrics_port, cfg, tls)
        # The health port speaks plaintext (Kubernetes' probes), and only health.
        plain_health = herd("status", "--coordinator", f"127.0.0.1:{health_port}", "--health", "--json")
        assert plain_health.returncode == 0 and json.loads(plain_health.stdout) == {"health": "SERVING"}
        status = herd("status", "--coordinator", f"127.0.0.1:{health_port}", "--token-file", tls / "token")
        assert status.returncode == 1 and "UNIMPLEMENTED" in status.stderr, status.stderr
        address = f"localhost:{port}"
        if indexed_job:
            workers = [subprocess.Popen([str(BIN / "herd"), "worker"], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True,
                                        env=env(JOB_COMPLETION_INDEX=i, HERD_COORDINATOR=address,
                                                HERD_JOB_TOKEN=TOKEN, HERD_TLS_CA=tls / "cert.pem"))
                       for i in range(2)]
        else:
            workers = [subprocess.Popen([str(BIN / "herd"), "worker", str(cfg), "--coordinator", address],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
                       for _ in range(2)]
        codes, outs = finish(workers)
        assert codes == [0, 0], outs
        # An index is a rank hint, with no world size; the gang's rank and size come once it forms.
        starts = sorted(re.search(r"herd worker: launched by (\w+)([^;]*);", o).group(1, 2) for o in outs)
        assert starts == ([("kubernetes", " (index 0)"), ("kubernetes", " (index 1)")] if indexed_job else
                          [("flags", ""), ("flags", "")]), outs
        assert all(re.search(r"^rank [01] of 2 \(attempt 1\)", o, re.M) for o in outs), outs
        out = coordinator.communicate(timeout=60)[0]  # a batch coordinator exits by itself: DONE is 0
        assert coordinator.returncode == 0 and "the job is DONE; every live worker knows; exiting 0" in out, out
    finally:
        if coordinator.poll() is None:
            coordinator.send_signal(signal.SIGTERM)
            coordinator.communicate(timeout=30)
    assert_same(tmp_path, reference)


def test_config_less_worker_checks_tls_for_the_name_it_is_told(model, tls, reference, tmp_path):
    """A coordinator whose certificate names only herd-coordinator.test, dialled at 127.0.0.1 (as a pod
    dials a Service's address): `herd status` and a worker without a config take the CA from HERD_TLS_CA
    and the name from HERD_TLS_SERVER_NAME or --tls-server-name; without the name the check fails."""
    name = "herd-coordinator.test"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
                    "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(tmp_path / "key.pem"), "-out",
                    str(tmp_path / "cert.pem")], check=True, capture_output=True)
    cfg = config(tmp_path, model, tls, 1)
    text = cfg.read_text().replace(str(tls / "cert.pem"), str(tmp_path / "cert.pem"))
    cfg.write_text(text.replace(str(tls / "key.pem"), str(tmp_path / "key.pem")).replace("localhost", name))
    port_file = tmp_path / "port"
    coordinator = subprocess.Popen([str(BIN / "herd-coordinator"), "--config", str(cfg), "--listen", "127.0.0.1:0",
                                    "--port-file", str(port_file)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
    try:
        deadline = time.time() + 60
        while not port_file.exists():
            assert time.time() < deadline and coordinator.poll() is None
            time.sleep(0.02)
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        trust = env(HERD_JOB_TOKEN=TOKEN, HERD_TLS_CA=tmp_path / "cert.pem")
        unnamed = herd("status", "--coordinator", address, "--json", env=trust)
        assert unnamed.returncode == 1 and f"coordinator {address} answered UNAVAILABLE" in unnamed.stderr, unnamed
        named = herd("status", "--coordinator", address, "--json", env=dict(trust, HERD_TLS_SERVER_NAME=name))
        assert named.returncode == 0 and json.loads(named.stdout)["job_id"] == "t", named.stderr
        worker = subprocess.run([str(BIN / "herd"), "worker", "--coordinator", address, "--tls-server-name", name],
                                capture_output=True, text=True, timeout=300, env=trust)
        assert worker.returncode == 0, worker.stdout + worker.stderr
        out = coordinator.communicate(timeout=60)[0]
        assert coordinator.returncode == 0, out
    finally:
        if coordinator.poll() is None:
            coordinator.send_signal(signal.SIGTERM)
            coordinator.communicate(timeout=30)
    assert_same(tmp_path, reference)
