"""What a run left behind, read as values: its events file and its adapter."""
import json

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
