"""The run directory: resolved config, metrics stream, summary and checkpoints.

``config.yaml`` is written when the run starts, ``metrics.jsonl`` gets one JSON line per
evaluation (appended whole or not at all, also on a full disk), and ``summary.json`` is
written atomically at the end (a run without it, or with a status other than
``completed``, is not a finished run). Checkpoints are written to a temporary file and
renamed, so a crash never leaves a half-written one. One process at a time works in a run
directory: it holds an exclusive lock on ``.lock`` (which names its pid) for as long as it
runs; the kernel releases it when the process ends, so a crashed run leaves no stale lock.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .core.errors import ConfigError, FedweaveError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"
LOCK = ".lock"


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
    """Write ``data`` to a temporary file (created with mode 0600) and rename it to ``path``."""
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


def check_output_path(path: str | Path, what: str, *, file: bool = False) -> Path:
    """Refuse, before anything is written, an output path that cannot be created:
    ``path`` (a directory, or a file when ``file``) exists as the other kind, or one of
    its parents is a file. Returns the path."""
    path = Path(path)
    kind = "file" if file else "directory"
    if path.exists() and path.is_dir() == file:
        raise ConfigError(f"{what} {str(path)!r} exists and is a {'directory' if file else 'file'}; it must be a "
                          f"{kind} (new, or {'one to replace' if file else 'a run directory'}). Choose another path.")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{what} {str(path)!r} cannot be created: {str(parent)!r} is a file, not a "
                                  f"directory. Choose a path whose parents are directories.")
            break
    return path


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(_clean(record), default=_json_default)


class RunDirectoryBusy(FedweaveError):
    """Another live process holds the run directory's lock."""


def _lock_fd(fd: int) -> bool:
    """Take an exclusive, non-blocking lock on ``fd``; False when another process holds it.
    The kernel drops the lock when its holder exits, however it exits (kill -9 included)."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:  # Windows: lock the first byte
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:  # BlockingIOError / PermissionError
        return False
    return True


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = None  # the open lock file while this process holds it

    # -- one process per run directory ---------------------------------------------------------
    def lock(self) -> None:
        """Hold the directory's lock (``.lock``, holding the holder's pid) until :meth:`unlock`
        or the end of the process; refuse with :class:`RunDirectoryBusy` when a live process
        holds it. A lock file left by a dead process is free and is taken over."""
        if self._lock is not None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        # a file object: if this RunDirectory is dropped without unlock(), closing it frees the lock
        f = open(self.path / LOCK, "a+")
        if not _lock_fd(f.fileno()):
            with f:
                f.seek(0)
                holder = f.read(32).strip() or "unknown"
            raise RunDirectoryBusy(
                f"The run directory {str(self.path)!r} is in use by process {holder} (it holds {LOCK} there): two "
                "processes writing one run would interleave its rounds. Wait for that process to end or stop it "
                "(a lock left by a process that died is taken over), or use another directory."
            )
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock = f

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    @property
    def locked(self) -> bool:
        return self._lock is not None

    # -- records ----------------------------------------------------------------------------
    def create(self, config_yaml: str) -> None:
        self.lock()
        for stale in (SUMMARY, METRICS, CHECKPOINT):
            (self.path / stale).unlink(missing_ok=True)
        atomic_write_text(self.path / CONFIG, config_yaml)
        (self.path / METRICS).touch()

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one record as one line: the line is whole or absent, also when the disk
        is full (a failed or short write is cut back off, then the error is raised)."""
        data = (dumps(record) + "\n").encode()
        fd = os.open(self.path / METRICS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                done = 0
                while done < len(data):
                    done += os.write(fd, data[done:])
            except BaseException:
                os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records; a last line without its newline (cut off by a crash) is not one."""
        path = self.path / METRICS
        if not path.exists():
            return []
        lines = path.read_text().split("\n")[:-1]  # the text after the last newline is incomplete
        return [json.loads(line) for line in lines if line.strip()]

    def rewrite_metrics(self, history: list[dict[str, Any]]) -> None:
        """Make ``metrics.jsonl`` hold exactly ``history`` (the records a checkpoint covers)."""
        atomic_write_text(self.path / METRICS, "".join(dumps(r) + "\n" for r in history))

    def truncate_metrics(self, count: int) -> None:
        """Keep the first ``count`` records (those covered by the checkpoint)."""
        self.rewrite_metrics(self.read_metrics()[:count])

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
        return torch.load(path, map_location="cpu", weights_only=False)  # a GPU-written checkpoint loads anywhere

    def clear_summary(self) -> None:
        (self.path / SUMMARY).unlink(missing_ok=True)
