"""The run directory: resolved config, metrics stream, summary and checkpoints.

``config.yaml`` is written when the run starts, ``metrics.jsonl`` gets one JSON line per
evaluation, and ``summary.json`` is written atomically at the end (a run without it, or
with a status other than ``completed``, is not a finished run). Checkpoints are written
to a temporary file and renamed, so a crash never leaves a half-written one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"


def _json_default(o: Any):
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(_clean(record), default=_json_default)


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def create(self, config_yaml: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in (SUMMARY, METRICS, CHECKPOINT):
            (self.path / stale).unlink(missing_ok=True)
        atomic_write_text(self.path / CONFIG, config_yaml)
        (self.path / METRICS).touch()

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.path / METRICS, "a") as f:
            f.write(dumps(record) + "\n")
            f.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.path / METRICS
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, count: int) -> None:
        """Keep the first ``count`` records (those covered by the checkpoint)."""
        lines = [ln for ln in (self.path / METRICS).read_text().splitlines() if ln.strip()][:count] if (self.path / METRICS).exists() else []
        atomic_write_text(self.path / METRICS, "".join(ln + "\n" for ln in lines))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.path / SUMMARY, json.dumps(_clean(summary), indent=2, default=_json_default) + "\n")

    def read_summary(self) -> dict[str, Any] | None:
        path = self.path / SUMMARY
        return json.loads(path.read_text()) if path.exists() else None

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{CHECKPOINT}.", dir=self.path)
        os.close(fd)
        try:
            torch.save(state, tmp)
            os.replace(tmp, self.path / CHECKPOINT)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def load_checkpoint(self) -> dict[str, Any] | None:
        path = self.path / CHECKPOINT
        if not path.exists():
            return None
        return torch.load(path, weights_only=False)

    def clear_summary(self) -> None:
        (self.path / SUMMARY).unlink(missing_ok=True)
