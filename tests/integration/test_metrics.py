"""Monitoring, checked against a live run (`herd train --workers 2`, metrics on, a configured peak
so that a CPU run has MFU): every process's Prometheus series are docs/metrics.md's catalogue, both
ways; a real Prometheus with deploy/prometheus/'s config scrapes the run and evaluates every
expression of deploy/grafana/herd.json and of the alert rules; promtool checks the config and
unit-tests every alert; after SIGINT, TensorBoard reads back what events.jsonl holds."""
import json
import os
import re
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from runs import events, free_ports

BIN = Path(os.environ["HERD_BIN"])
SRC = Path(os.environ["HERD_SOURCE_DIR"])
DEPLOY = SRC / "deploy"
PEAK = 0.5e12
TOKEN = "herd-job-token-that-must-never-be-printed-7f3a9c"


def catalogue():
    """docs/metrics.md's tables: {process: {name: type}}."""
    out = {"worker": {}, "coordinator": {}}
    for line in (SRC / "docs" / "metrics.md").read_text().splitlines():
        m = re.match(r"\| `(herd_\w+)` \| (counter|gauge|histogram) \|.*\| (worker|coordinator) \|$", line)
        if m:
            out[m.group(3)][m.group(1)] = m.group(2)
    return out


def scrape(port):
    """herd's families an endpoint serves with at least one sample, {name: type} (the exporter
    library's own exposer_* aside), and the text."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    types = dict(re.findall(r"^# TYPE (\w+) (\w+)$", text, re.M))
    sampled = {re.match(r"(\w+?)(_bucket|_sum|_count)?[{ ]", l).group(1) for l in text.splitlines()
               if l and not l.startswith("#")}
    return {n: t for n, t in types.items() if n in sampled and n.startswith("herd_")}, text


def value(text, series):
    m = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


class Run:
    def __init__(self, model, d):
        self.dir, self.coordinator, self.workers = d, free_ports(1), free_ports(2)
        self.out, self.seen_scrapes = None, {}
        (d / "secret").mkdir()
        (d / "secret" / "token").write_text(TOKEN + "\n")
        self.config = cfg = d / "c.yaml"
        cfg.write_text(f"""model_name: t
base_model: {model}
model_context_window: 128
data: {{type: vicuna, dataset: {SRC / 'data' / 'sample-vicuna.json'}, eval_fraction: 0.2}}
lora: {{r: 8, lora_alpha: 16, target_modules: all-linear, lora_dropout: 0.0, bias: none, task_type: CAUSAL_LM}}
trainer: {{device: cpu, batch_size: 2, gradient_accumulation_steps: 2, warmup_steps: 3, num_train_epochs: 1,
          max_steps: 2000, learning_rate: 0.01, logging_steps: 1, seed: 7, eval_steps: 2}}
trainer_output_dir: {d}/trainer
model_output_dir: {d}/models
quantization: {{enabled: true, compute_dtype: float32}}
checkpoint: {{every_steps: 2}}
distributed: {{world_size: 2}}
metrics: {{enabled: true, port: {self.coordinator}, worker_port: {self.workers}, peak_tflops: {PEAK / 1e12}}}
security: {{token_file: {d}/secret/token}}
""")
        self.proc = subprocess.Popen([str(BIN / "herd"), "train", str(cfg), "--workers", "2"], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))

    def ports(self):
        return {"coordinator": self.coordinator, "worker 0": self.workers, "worker 1": self.workers + 1}

    def scrapes(self):
        self.seen_scrapes = {name: scrape(port) for name, port in self.ports().items()}
        return self.seen_scrapes

    def stop(self):
        """SIGINT; what the run printed."""
        if self.out is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
            self.out = self.proc.communicate(timeout=120)[0]
        return self.out


@pytest.fixture(scope="module")
def run(model, tmp_path_factory):
    """The run, once every rank has evaluated and checkpointed (every series exists)."""
    r = Run(model, tmp_path_factory.mktemp("monitored"))
    try:
        deadline = time.time() + 180
        while True:
            assert r.proc.poll() is None, r.stop()
            assert time.time() < deadline, "the series did not all appear in 3 minutes"
            try:
                got = r.scrapes()
                if all("herd_checkpoint_seconds" in got[w][0] and "herd_eval_loss" in got[w][0]
                       for w in ("worker 0", "worker 1")) and value(got["coordinator"][1], "herd_committed_step") >= 2:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        yield r
    finally:
        if r.proc.poll() is None:
            r.stop()


def test_every_process_serves_the_catalogue_and_only_it(run):
    want = catalogue()
    assert len(want["worker"]) == 19 and len(want["coordinator"]) == 13, want
    got = run.scrapes()
    assert got["coordinator"][0] == want["coordinator"]
    ranks = set()
    for w in ("worker 0", "worker 1"):  # each worker's series carry its rank in the gang
        families, text = got[w]
        assert families == want["worker"], w
        r = re.search(r'^herd_attempt\{rank="(\d+)"\} 1$', text, re.M).group(1)
        ranks.add(r)
        assert value(text, f'herd_peak_flops{{rank="{r}"}}') == PEAK
        assert value(text, f'herd_steps_total{{rank="{r}"}}') >= 2
    assert ranks == {"0", "1"}
    coordinator = got["coordinator"][1]
    assert value(coordinator, 'herd_job_state{state="RUNNING"}') == 1
    assert value(coordinator, 'herd_job_state{state="DONE"}') == 0
    assert value(coordinator, 'herd_workers{state="in_gang"}') == 2
    assert value(coordinator, "herd_attempts_total") == 1
    assert value(coordinator, "herd_auth_failures_total") == 0


def test_promtool_checks_the_config_and_unit_tests_every_alert():
    prom = DEPLOY / "prometheus"
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
                 ["test", "rules", "alerts_test.yml"]):
        out = subprocess.run(["promtool", *args], cwd=prom, capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    alerts = {r["alert"] for g in yaml.safe_load((prom / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    tests = yaml.safe_load((prom / "alerts_test.yml").read_text())["tests"]
    for alert in alerts:  # each alert is seen firing and not firing
        cases = [c for t in tests for c in t["alert_rule_test"] if c["alertname"] == alert]
        assert any(c["exp_alerts"] for c in cases) and any(not c["exp_alerts"] for c in cases), alert
    # Kubernetes discovery (Debian's Prometheus is built without it: its shape is checked here).
    k8s = yaml.safe_load((prom / "kubernetes.yml").read_text())["scrape_configs"][0]
    assert k8s["kubernetes_sd_configs"] == [{"role": "pod"}]
    keep = {r["source_labels"][0]: r["regex"] for r in k8s["relabel_configs"] if r.get("action") == "keep"}
    assert keep == {"__meta_kubernetes_pod_label_app_kubernetes_io_part_of": "herd",
                    "__meta_kubernetes_pod_container_port_name": "metrics"}
    assert "component" in {r.get("target_label") for r in k8s["relabel_configs"]}


def dashboard_queries(dash):
    """Every query of deploy/grafana/herd.json, and its variables' queries."""
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    variables = [v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs, variables


def as_evaluated(expr):
    """A dashboard query as Prometheus runs it with every job and rank selected."""
    return expr.replace("$job", ".*").replace("$rank", ".*").replace("$__rate_interval", "1m")


def test_prometheus_scrapes_the_run_and_every_dashboard_and_alert_expression_has_data(run, tmp_path):
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(DEPLOY / "prometheus" / "alerts.yml")]
    local = config["scrape_configs"][0]
    local["static_configs"][0]["targets"] = [f"127.0.0.1:{run.coordinator}"]
    local["static_configs"][1]["targets"] = [f"127.0.0.1:{run.workers}", f"127.0.0.1:{run.workers + 1}"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_ports(1)
    prometheus = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def query(expr):
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            answer = json.load(urllib.request.urlopen(url, timeout=10))
        except urllib.error.HTTPError as e:
            answer = json.load(e)
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    try:
        deadline = time.time() + 60
        while True:  # two scrapes of every target, and a minute's rates to take
            assert prometheus.poll() is None, prometheus.stderr.read()
            assert time.time() < deadline, "Prometheus did not scrape every target twice"
            try:
                scraped = query('count_over_time(up[5m]) >= 2 and up == 1')
                rates = query('rate(herd_steps_total[1m]) > 0')
                if len(scraped) == 3 and len(rates) == 2:
                    break
            except OSError:
                pass
            time.sleep(1)

        dash = json.loads((DEPLOY / "grafana" / "herd.json").read_text())
        exprs, variables = dashboard_queries(dash)
        names = set()
        for expr in exprs:
            names |= set(re.findall(r"\b((?:herd|DCGM)_\w+)", expr))
            result = query(as_evaluated(expr))
            assert result or "DCGM_" in expr, expr  # DCGM's exporter does not run here: its queries must parse
        for v in variables:  # label_values(SELECTOR, LABEL)
            selector, label = re.fullmatch(r"label_values\((.*), (\w+)\)", v).groups()
            values = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/label/{label}/values?" +
                                                      urllib.parse.urlencode({"match[]": as_evaluated(selector)})))
            assert values["data"], v
        rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
        for rule in (r for g in rules["groups"] for r in g["rules"]):
            query(rule["expr"])  # it evaluates; and each series it reads has data
            for name in set(re.findall(r"\b(herd_\w+|up)\{?", rule["expr"])):
                assert query(name), (rule["alert"], name)

        # Every metric the dashboard names is in the catalogue and was scraped from the run.
        want = catalogue()
        stored = {n for n in query('group by (__name__) ({__name__=~"herd_.+"})') for n in [n["metric"]["__name__"]]}
        for name in names - {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_POWER_USAGE"}:
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in want["worker"] or base in want["coordinator"], name
            assert name in stored, name
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)


def test_the_dashboard_uses_its_variables_and_no_fixed_datasource():
    dash = json.loads((DEPLOY / "grafana" / "herd.json").read_text())
    assert dash["schemaVersion"] >= 39
    text = json.dumps(dash["panels"])
    uids = {d["uid"] for p in dash["panels"] for d in [p.get("datasource")] + [t.get("datasource") for t in
                                                                                p.get("targets", [])] if d}
    assert uids == {"${datasource}"}
    exprs, variables = dashboard_queries(dash)
    used = text + " ".join(variables)
    for v in dash["templating"]["list"]:
        assert f"${v['name']}" in used or f"${{{v['name']}}}" in used, v["name"]
    titles = {p["title"] for p in dash["panels"]}
    for wanted in ("Loss", "Learning rate", "Tokens per second", "MFU", "Step time", "Share of step time", "Memory",
                   "Workers", "Attempts", "ETA", "Checkpoint age", "GPU utilisation", "GPU memory used", "GPU power"):
        assert wanted in titles, wanted
    assert all(p.get("targets") for p in dash["panels"] if p["type"] != "row")


def test_the_job_token_appears_in_no_output(run):
    """The token (from security.token_file) is in none of the run's files (events, TensorBoard,
    checkpoints, journal, adapter, caches), its output, any process's /metrics, or `herd config
    check` (table and JSON)."""
    # The run does use this token: its coordinator answers with it, and refuses another.
    (endpoint,) = run.dir.rglob("endpoint.json")
    address = f"127.0.0.1:{json.loads(endpoint.read_text())['port']}"
    for token, code in ((TOKEN, 0), ("another-token", 1)):
        status = subprocess.run([str(BIN / "herd"), "status", "--coordinator", address], capture_output=True,
                                text=True, timeout=60, env=dict(os.environ, HERD_JOB_TOKEN=token))
        assert status.returncode == code, status.stdout + status.stderr
        assert TOKEN not in status.stdout + status.stderr
    out = run.stop()
    texts = {"the run's output": out}
    texts.update({f"/metrics of {name}": text for name, (_, text) in run.seen_scrapes.items()})
    for args in ([], ["--json"]):
        check = subprocess.run([str(BIN / "herd"), "config", "check", str(run.config), *args], capture_output=True,
                               text=True, timeout=60)
        assert check.returncode == 0, check.stderr
        assert "secret/token" in check.stdout  # the file is named, its content is not
        texts[f"herd config check {' '.join(args)}"] = check.stdout + check.stderr
    assert len(run.seen_scrapes) == 3 and all(texts.values())
    for what, text in texts.items():
        assert TOKEN not in text, what
    files = [p for p in run.dir.rglob("*") if p.is_file() and p.parent.name != "secret"]
    assert any(p.name == "events.jsonl" for p in files) and any(p.name == "journal.log" for p in files)
    assert any(p.name.startswith("events.out.tfevents") for p in files)
    for p in files:
        assert TOKEN.encode() not in p.read_bytes(), p


def test_sigint_stops_the_run_and_tensorboard_reads_the_events(run):
    out = run.stop()
    assert run.proc.returncode == 130, out
    steps = events(run.dir)
    assert len(steps) >= 2
    files = list((run.dir / "trainer" / "runs").glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    acc = EventAccumulator(str(files[0].parent))
    acc.Reload()
    as_float32 = lambda v: float(np.float32(v))  # a TensorBoard scalar is a float32
    for tag, key in [("train/loss", "loss"), ("train/learning_rate", "learning_rate"),
                     ("train/grad_norm", "grad_norm"), ("train/tokens_per_second", "tokens_per_second"),
                     ("train/mfu", "mfu")]:
        assert [(e.step, e.value) for e in acc.Scalars(tag)] == [(s["step"], as_float32(s[key])) for s in steps], tag
    evals = events(run.dir, "eval")
    assert evals and [(e.step, e.value) for e in acc.Scalars("eval/loss")] == \
        [(e["step"], as_float32(e["eval_loss"])) for e in evals]
    for s in steps:  # MFU: the step's model FLOPs over its time and the two ranks' peak
        assert s["mfu"] == s["model_flops"] / s["seconds"] / (2 * PEAK)
        assert s["hardware_flops"] > s["model_flops"] > 0

