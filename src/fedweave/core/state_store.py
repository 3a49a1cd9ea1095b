"""The client-state store: per-client tensors that persist across rounds.

SCAFFOLD's control variates, personal model segments, FLIP's triggers... live here,
owned by the simulator rather than by the executor's workers, so any worker can run any
client. Stateless clients cost nothing: nothing is stored until a client has state.

With a memory budget (``executor.state_memory_mb``) the store keeps the most recently
used states in memory, up to the budget, and spills the others to files in
``spill_dir``, loading them back (memory-mapped) when their client is dispatched again.
Spill files are written once and never modified (a new file per batch of spilled
states), so a checkpoint can refer to them by name: a snapshot is a mapping from client
id to either an in-memory state or (file, client id), and stays valid while the run goes
on. Files that neither the store nor a snapshot refers to any more are deleted.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch


LOW_WATER = 0.8  # a spill brings the in-memory states down to this share of the budget


def state_bytes(state: dict[str, Any]) -> int:
    return sum(v.numel() * v.element_size() if isinstance(v, torch.Tensor) else 8 for v in state.values())


class SpilledState:
    """A reference to a state saved in a file (what snapshots and checkpoints hold): the
    file holds the states of the clients spilled together, by client id."""

    __slots__ = ("path", "key")

    def __init__(self, path: str, key: int | None = None):
        self.path = path
        self.key = key  # None: a file holding one state (written before spills were batched)

    def load(self) -> dict[str, Any]:
        # memory-mapped: the other clients' tensors in the file are not read
        saved = torch.load(self.path, mmap=True, map_location="cpu", weights_only=False)
        return saved if self.key is None else saved[self.key]

    def __reduce__(self):
        return (SpilledState, (self.path, self.key))


class ClientStateStore:
    def __init__(self, memory_budget_bytes: int | None = None, spill_dir: str | Path | None = None):
        self.budget = memory_budget_bytes
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        if self.budget is not None and self.spill_dir is None:
            raise ValueError("a memory budget needs a spill directory")
        self._memory: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._spilled: dict[int, SpilledState] = {}
        self._bytes = 0
        self._orphans: set[str] = set()  # spill files the live store no longer refers to
        self._seq = itertools.count()
        self.spills = 0  # states spilled
        self.spill_files = 0  # files written (a file holds a batch of states)
        self.loads = 0

    def get(self, client_id: int) -> dict[str, Any] | None:
        state = self._memory.get(client_id)
        if state is not None:
            self._memory.move_to_end(client_id)
            return state
        ref = self._spilled.get(client_id)
        if ref is None:
            return None
        self.loads += 1
        return ref.load()

    def put(self, client_id: int, state: dict[str, Any] | None) -> None:
        if state is None:
            return
        old = self._memory.pop(client_id, None)
        if old is not None:
            self._bytes -= state_bytes(old)
        replaced = self._spilled.pop(client_id, None)
        if replaced is not None:
            self._orphans.add(replaced.path)
        self._memory[client_id] = state
        self._bytes += state_bytes(state)
        self._enforce_budget()

    def _enforce_budget(self) -> None:
        """Over budget: spill the least recently used states down to ``LOW_WATER`` of the
        budget, all into one new file (one ``torch.save`` per batch rather than per client:
        a file's fixed cost is most of a small state's)."""
        if self.budget is None or self._bytes <= self.budget:
            return
        batch: dict[int, dict[str, Any]] = {}
        while self._bytes > LOW_WATER * self.budget and len(self._memory) > 1:
            cid, state = self._memory.popitem(last=False)  # least recently used
            batch[cid] = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
            self._bytes -= state_bytes(state)
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        path = str(self.spill_dir / f"clients-{next(self._seq)}.pt")
        torch.save(batch, path)
        for cid in batch:
            self._spilled[cid] = SpilledState(path, cid)
        self.spills += len(batch)
        self.spill_files += 1

    def __len__(self) -> int:
        return len(self._memory) + len(self._spilled)

    @property
    def memory_bytes(self) -> int:
        return self._bytes

    def state_dict(self) -> dict[int, Any]:
        """A snapshot: in-memory states by reference, spilled ones by file."""
        snap: dict[int, Any] = dict(self._spilled)
        snap.update(self._memory)
        return snap

    def load_state_dict(self, states: dict[int, Any]) -> None:
        self._orphans |= {ref.path for ref in self._spilled.values()}
        self._memory.clear()
        self._spilled.clear()
        self._bytes = 0
        for cid, st in states.items():
            if isinstance(st, SpilledState):
                self._spilled[int(cid)] = st
            else:
                self._memory[int(cid)] = st
                self._bytes += state_bytes(st)
        self._enforce_budget()

    def collect_garbage(self, *snapshots: dict[int, Any]) -> int:
        """Delete spill files that neither the live store nor ``snapshots`` refer to.

        Only files the store has let go of are candidates (no directory scan: with 10,000
        clients a scan costs more than a round); one still held by a snapshot stays a
        candidate until no snapshot holds it."""
        if not self._orphans:
            return 0
        keep = {ref.path for ref in self._spilled.values()}
        for snap in snapshots:
            keep |= {v.path for v in snap.values() if isinstance(v, SpilledState)}
        removed = 0
        for path in list(self._orphans):
            if path in keep:
                continue
            Path(path).unlink(missing_ok=True)
            self._orphans.discard(path)
            removed += 1
        return removed
