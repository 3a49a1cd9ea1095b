"""Helpers for tests that recompute evaluation figures outside the engine."""

from __future__ import annotations

import json

import pytest
import torch

import fedweave
from fedweave.messages import Broadcast
from fedweave.params import FlatModel


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


def each_clients_own_model(exp, last: dict, server: dict, states: dict):
    """For every client with a validation split, load its own model (the method's
    ``personalize`` over the final global model and the client's final state) into one
    fresh flat model; yields (client id, validation indices, that module)."""
    flat = FlatModel(exp.model_factory(), exp.roles)
    initial = {"personal": flat.personal.clone(), "personal_buffers": flat.personal_buffers.clone()}
    broadcast = Broadcast(last["version"], server["params"], server["buffers"])
    for cid, val in enumerate(exp.data.client_val):
        if len(val) == 0:
            continue
        exp.algorithm.personalize(flat, broadcast, states.get(cid), initial)
        yield cid, val, flat.module
