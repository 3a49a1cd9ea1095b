"""Who may hold what on the server: upload streams per client, their idle time, and which
process speaks for a client.

Every call runs on a thread of the server's pool, and a client-streaming ``SendUpdate``
holds its thread until the client's last frame. A client with a valid token that opens
many upload streams and never sends a frame would hold every thread: no round, no health
check (issue #20: 40 such streams took a server from ~1,000 rounds per 20 s to 1).
:class:`UploadStreams` bounds the open upload streams of each client
(``MAX_UPLOADS_PER_CLIENT``: one update is in flight at a time, plus one for a client that
restarted while its old stream lingers) and ends every stream that receives no frame for
``idle_s`` seconds (``DEFAULT_STREAM_IDLE_S`` unless ``--stream-idle-s``).

**Sessions.** A client process sends a random session id with every call
(``SESSION_METADATA``). When a client joins from a session other than its current one,
the new session **supersedes** the old one: the server logs it, and every later call of
the old session is refused with ``FAILED_PRECONDITION`` and a message saying so (its
client stops and logs it). We chose superseding over refusing the second session: a
client that restarts after a crash (a new process, hence a new session) takes its place
at once instead of being locked out until the old session times out, and two processes
sharing a token end with one of them stopped and both logs saying why, instead of both
being accepted silently.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("fedweave.deploy.server")

#: the gRPC metadata key of a client process's session id
SESSION_METADATA = "fedweave-session"
#: upload streams one client may hold open at once
MAX_UPLOADS_PER_CLIENT = 2
#: seconds an upload stream may wait for its next frame (a frame carries at most 4 MiB:
#: 30 s is ~1 Mbit/s)
DEFAULT_STREAM_IDLE_S = 30.0
SUPERSEDED = "superseded"


def session_of(context) -> str:
    """The session id a call carries ("" when none: an older or hand-written client)."""
    for key, value in context.invocation_metadata() or ():
        if key == SESSION_METADATA:
            return str(value)[:128]
    return ""


def superseded_message(cid: int, peer: str) -> str:
    return (f"{SUPERSEDED}: client {cid} is held by another session with this token (joined last from {peer}); "
            "this session's calls are refused. Run one client process per token.")


@dataclass
class _Stream:
    client_id: int
    context: object
    last: float
    cancelled: bool = False


class UploadStreams:
    """Open upload streams: at most ``per_client`` per client, each ended after ``idle_s``
    seconds without a frame (a watchdog thread cancels it; the handler's next read raises)."""

    def __init__(self, per_client: int = MAX_UPLOADS_PER_CLIENT, idle_s: float = DEFAULT_STREAM_IDLE_S):
        if per_client < 1:
            raise ValueError(f"per_client must be >= 1, got {per_client}")
        if not idle_s > 0:
            raise ValueError(f"idle_s must be > 0, got {idle_s}")
        self.per_client, self.idle_s = per_client, float(idle_s)
        self._lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self._ids = itertools.count()
        self._closed = threading.Event()
        self._watchdog: threading.Thread | None = None
        self.timed_out = 0
        self.refused = 0

    def open(self, cid: int, context) -> int | None:
        """A key for a new stream of ``cid``, or None when it already holds ``per_client``."""
        with self._lock:
            if sum(1 for s in self._streams.values() if s.client_id == cid) >= self.per_client:
                self.refused += 1
                return None
            key = next(self._ids)
            self._streams[key] = _Stream(cid, context, time.monotonic())
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, name="fedweave-stream-watchdog", daemon=True)
                self._watchdog.start()
            return key

    def frames(self, key: int, frames):
        """The stream's frames, each one resetting its idle time."""
        for f in frames:
            with self._lock:
                s = self._streams.get(key)
                if s is not None:
                    s.last = time.monotonic()
            yield f

    def idle_out(self, key: int) -> bool:
        """Whether the watchdog ended this stream."""
        with self._lock:
            s = self._streams.get(key)
            return s is not None and s.cancelled

    def close(self, key: int) -> None:
        with self._lock:
            self._streams.pop(key, None)

    def stop(self) -> None:
        self._closed.set()

    def _watch(self) -> None:
        tick = min(1.0, self.idle_s / 4)
        while not self._closed.wait(tick):
            now = time.monotonic()
            with self._lock:
                stale = [s for s in self._streams.values() if not s.cancelled and now - s.last > self.idle_s]
                for s in stale:
                    s.cancelled = True
                    self.timed_out += 1
            for s in stale:
                log.warning("client %d: an upload stream sent nothing for %.0f s; ended", s.client_id, self.idle_s)
                try:
                    s.context.cancel()  # frees the handler's thread: its read of the next frame fails
                except Exception:  # the call ended meanwhile
                    pass


__all__ = ["UploadStreams", "SESSION_METADATA", "MAX_UPLOADS_PER_CLIENT", "DEFAULT_STREAM_IDLE_S", "session_of",
           "superseded_message", "SUPERSEDED"]
