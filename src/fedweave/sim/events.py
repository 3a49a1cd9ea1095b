"""Virtual time: clocks and a deterministic event queue.

Events are ordered by ``(virtual time, sequence number)``; the sequence number is the
order in which they were scheduled, so events at equal times always come out in the
same order (as in FederatedScope's event ordering).
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Any


class VirtualClock:
    """Simulated seconds; advanced only by the engine."""

    def __init__(self, start: float = 0.0):
        self.t = float(start)

    def now(self) -> float:
        return self.t

    def advance_to(self, t: float) -> None:
        if t < self.t:
            raise ValueError(f"virtual time cannot go back ({t} < {self.t})")
        self.t = float(t)


class WallClock:
    """Seconds since construction, for deployments."""

    def __init__(self):
        self._start = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._start


@dataclass(order=True)
class Event:
    time: float
    seq: int
    kind: str = field(compare=False)
    data: Any = field(compare=False, default=None)


class EventQueue:
    def __init__(self):
        self._heap: list[Event] = []
        self._seq = 0

    def push(self, time: float, kind: str, data: Any = None) -> Event:
        event = Event(float(time), self._seq, kind, data)
        self._seq += 1
        heapq.heappush(self._heap, event)
        return event

    def pop(self) -> Event:
        return heapq.heappop(self._heap)

    def peek(self) -> Event | None:
        return self._heap[0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)
