"""The environment for fedweave subprocesses started by tests: this checkout's ``src`` first
on PYTHONPATH (so the code under test runs, not an installed copy), no client token."""

from __future__ import annotations

import os
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def subprocess_env(**extra: str) -> dict:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
    env.pop("FEDWEAVE_TOKEN", None)
    return env
