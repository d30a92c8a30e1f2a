"""What a run left behind, read as values: its events file and its adapter; and free ports for one."""
import json
import socket

from safetensors.torch import load_file


def events(run_dir, event="step", trainer_dir="trainer"):
    """The run's records of one kind from {trainer_output_dir}/events.jsonl, in order (rank 0 writes
    them); none when there is no file yet."""
    path = run_dir / trainer_dir / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [r for r in map(json.loads, lines) if r["event"] == event]


def losses(run_dir):
    """Step -> loss, at full precision."""
    return {r["step"]: r["loss"] for r in events(run_dir)}


def adapter(run_dir, name="t"):
    return load_file(str(run_dir / "models" / f"{name}_adapter" / "adapter_model.safetensors"))


def free_ports(n=1):
    """A port p with p .. p + n - 1 free (a worker's metrics port is worker_port + its local rank)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        socks = []
        try:
            for p in range(base, base + n):
                socks.append(socket.socket())
                socks[-1].bind(("0.0.0.0", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} free ports in a row")


def free_port():
    return free_ports(1)
