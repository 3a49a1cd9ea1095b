"""Helpers for tests that recompute evaluation figures outside the engine."""

from __future__ import annotations

import json

import pytest
import torch

import fedweave


def run_keeping_the_final_checkpoint(cfg, out) -> tuple[dict, dict, dict]:
    """Run to the end, then stop as Ctrl-C would right after the last evaluation: the run
    directory keeps the checkpoint of the final, committed state, client states included.
    Returns (last evaluation record, server state, client states)."""
    def stop_at_the_end(done, total, record):
        if done == total:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fedweave.run(cfg, out=out, progress=stop_at_the_end)
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    states = {cid: (st.load() if hasattr(st, "load") else st) for cid, st in ckpt["client_states"].items()}
    return last, ckpt["state"], states
