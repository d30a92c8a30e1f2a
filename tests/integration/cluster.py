"""A job as a cluster runs it: herd-coordinator on a loopback port with its state directory and
token file, `herd worker` processes, and what the journal says was trained."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from runs import losses

BIN = Path(os.environ["HERD_BIN"])
TOKEN = "distributed-test-token"


def herd(*args, timeout=300, env=None):
    return subprocess.run([str(BIN / "herd"), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env)


def sample_log(config_file, state_dir=None):
    """The journal's lineage of a finished run: step -> the samples it trained."""
    state = ["--state-dir", str(state_dir)] if state_dir else []
    out = subprocess.run([str(BIN / "herd-coordinator"), "--config", str(config_file), *state, "--sample-log"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return {int(l.split()[0]): [int(x) for x in l.split()[1:]] for l in out.stdout.splitlines()}


class Coordinator:
    """herd-coordinator for a config on a free loopback port, as a cluster would run it."""

    def __init__(self, config, state):
        self.config, self.state = config, state
        (state.parent / "token").write_text(TOKEN + "\n")
        self.start("127.0.0.1:0")

    def start(self, listen):
        port_file = self.state.parent / "port"
        port_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen([str(BIN / "herd-coordinator"), "--config", str(self.config), "--listen", listen,
                                      "--port-file", str(port_file), "--state-dir", str(self.state),
                                      "--token-file", str(self.state.parent / "token")],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 60
        while not port_file.exists():
            assert self.proc.poll() is None and time.time() < deadline, self.proc.stdout.read()
            time.sleep(0.05)
        self.address = f"127.0.0.1:{int(port_file.read_text())}"

    def worker(self, log, with_config=True, config=None, address=None, env=None):
        """A worker process; without the config it fetches the coordinator's, as a pod does. `config`
        gives it another file; `address` another way to the coordinator (a proxy); `env` more
        environment variables."""
        config = [str(config or self.config)] if with_config else []
        return subprocess.Popen([str(BIN / "herd"), "worker", *config, "--coordinator", address or self.address,
                                 "--token-file", str(self.state.parent / "token")],
                                stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))

    def status(self):
        out = herd("status", "--coordinator", self.address, "--json", env=dict(os.environ, HERD_JOB_TOKEN=TOKEN))
        return json.loads(out.stdout) if out.returncode == 0 else {}

    def samples(self):
        return sample_log(self.config, self.state)

    def ended(self):
        """A batch coordinator exits by itself once its job has ended: its status and what it printed."""
        out = self.proc.communicate(timeout=60)[0]
        return self.proc.returncode, out

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.communicate(timeout=30)


def logs(tmp_path, *names):
    """The named workers' logs (tmp_path/NAME.log), one after the other."""
    return "".join((tmp_path / f"{n}.log").read_text() for n in names)


def wait_for_recorded_step(step, out, procs, timeout=120):
    """Until the run's events file records `step`; the processes must live."""
    deadline = time.time() + timeout
    while max(losses(out), default=0) < step:
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
