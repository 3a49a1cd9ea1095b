"""Every shell block marked runnable in README.md and docs/howto/*.md runs as written.

A block is runnable when its fence reads ```` ```bash runnable ```` (```` ```bash runnable
slow ```` for one that takes minutes, e.g. starting Ray: run by ``make test-slow``). The blocks of one page
run in order, in one temporary folder that holds the repository's ``examples/``, with the
environment's ``fedweave`` first on ``PATH``. Commands that train are shortened — every
``fedweave run``, ``sweep`` and ``serve`` gets ``--set schedule.rounds=2 --set
client.epochs=1`` appended (later ``--set`` values win) — so the test checks that the
commands work, not what they converge to.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_subprocess import subprocess_env

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs" / "howto").glob("*.md"))]
FENCE = re.compile(r"^```bash runnable( slow)?[^\n]*\n(.*?)^```", re.S | re.M)
SHORTEN = " --set schedule.rounds=2 --set client.epochs=1"
TRAINS = re.compile(r"^(\s*(?:\S+=\S+\s+)*fedweave (?:run|sweep|serve)\b(?!.*--resume).*?)(\s*&)?(\s*#.*)?$")


def runnable_blocks(page: Path, slow: bool | None = None) -> list[str]:
    """The page's runnable blocks (only the slow ones, or only the others, when ``slow`` is given)."""
    return [m.group(2) for m in FENCE.finditer(page.read_text()) if slow is None or bool(m.group(1)) == slow]


def shortened(block: str) -> str:
    """Join continued lines, then append the shortening overrides to training commands."""
    lines = block.replace("\\\n", " ").splitlines()
    out = []
    for line in lines:
        m = TRAINS.match(line)
        out.append(f"{m.group(1)}{SHORTEN}{m.group(2) or ''}" if m else line)
    return "\n".join(out)


PAGES_WITH_BLOCKS = [p for p in PAGES if runnable_blocks(p)]
CASES = [pytest.param(p, False, id=p.name) for p in PAGES if runnable_blocks(p, slow=False)] + [
    pytest.param(p, True, id=f"{p.name}-slow", marks=pytest.mark.slow) for p in PAGES if runnable_blocks(p, slow=True)]


def test_runnable_blocks_exist_in_the_how_tos():
    names = {p.name for p in PAGES_WITH_BLOCKS}
    assert {"run-an-experiment.md", "personalization.md", "compare-methods.md", "byo.md"} <= names, names


@pytest.mark.parametrize("page,slow", CASES)
def test_shell_blocks_run_as_written(page, slow, tmp_path):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = subprocess_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for i, block in enumerate(runnable_blocks(page, slow)):
        script = "set -euo pipefail\n" + shortened(block)
        res = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, (f"{page.relative_to(ROOT)} block {i + 1} failed (exit {res.returncode}):\n"
                                     f"{script}\n--- stdout\n{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-3000:]}")


def test_shortening_appends_to_training_commands_only():
    block = "fedweave run a.yaml \\\n  --set x=1  # note\nfedweave methods\nfedweave run --resume runs/x\n" \
            "FOO=1 fedweave serve c.yaml &"
    assert shortened(block).splitlines() == [
        f"fedweave run a.yaml    --set x=1{SHORTEN}", "fedweave methods", "fedweave run --resume runs/x",
        f"FOO=1 fedweave serve c.yaml{SHORTEN} &"]
