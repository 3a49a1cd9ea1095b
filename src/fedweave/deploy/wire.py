"""The wire format of deployed messages: a JSON header plus raw tensor bytes, in frames.

A :class:`~fedweave.messages.Broadcast` or :class:`~fedweave.messages.Update` becomes

* a **header** (JSON): the protocol version, the message's scalars (version, round, job
  counter, learning rate, number of examples, metrics...), its payload structure, and for
  every tensor its dtype, shape and byte range in the data;
* the **data**: the tensors' raw little-endian bytes, one after the other (each aligned
  to 8 bytes).

On gRPC the message travels as a stream of ``Frame`` messages: the first carries the
header, and every frame carries the next slice of at most ``frame_bytes`` data bytes, so a
model of any size crosses in messages far below gRPC's message-size limit.

Decoding validates everything before a tensor is built: the header's size and types, the
dtypes (a fixed allow-list), shapes, byte ranges and the total size against a cap. A
message that breaks a rule raises :class:`WireError` with the reason.
"""

from __future__ import annotations

import json
import math
import numbers
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch

from ..core.errors import FedweaveError
from ..core.messages import Broadcast, Update

PROTOCOL = "fedweave-deploy/1"
MAX_HEADER_BYTES = 1 << 20  # 1 MiB of JSON is far more than any legitimate header
DEFAULT_FRAME_BYTES = 1 << 20  # data bytes per frame
MAX_FRAME_BYTES = 4 << 20
# what one gRPC message may hold: a full data slice plus a header, with room for framing
MAX_MESSAGE_BYTES = MAX_FRAME_BYTES + MAX_HEADER_BYTES + (64 << 10)
MAX_DIMS = 8
MAX_TENSORS = 4096
MAX_METRICS = 64
_ALIGN = 8

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("fedweave.deploy sends raw little-endian tensor bytes; this machine is big-endian")


class WireError(FedweaveError):
    """A message that does not follow the wire format (or breaks one of its limits)."""


@dataclass
class Encoded:
    """A message ready to send: its header and its tensor bytes."""

    header: dict[str, Any]
    data: bytes | bytearray
    _chunks: dict[int, list[bytes]] = field(default_factory=dict, repr=False)

    def chunks(self, frame_bytes: int) -> list[bytes]:
        """The data cut into frame-sized pieces (cut once: a broadcast goes to many clients)."""
        if frame_bytes not in self._chunks:
            self._chunks[frame_bytes] = [bytes(d) for _, d in iter_frames({}, self.data, frame_bytes)]
        return self._chunks[frame_bytes]

    def frames(self, frame_bytes: int = DEFAULT_FRAME_BYTES, extra: dict[str, Any] | None = None) -> Iterator[tuple[bytes, bytes]]:
        """``(header bytes, data slice)`` pairs: the header in the first only."""
        header = dump_header({**self.header, **(extra or {})})
        for i, chunk in enumerate(self.chunks(frame_bytes)):
            yield (header if i == 0 else b""), chunk


def dump_header(header: dict[str, Any]) -> bytes:
    raw = json.dumps(header, separators=(",", ":"), allow_nan=True).encode()
    if len(raw) > MAX_HEADER_BYTES:
        raise WireError(f"message header of {len(raw)} bytes exceeds the limit of {MAX_HEADER_BYTES}")
    return raw


def iter_frames(header: dict[str, Any], data: bytes | bytearray | memoryview, frame_bytes: int) -> Iterator[tuple[bytes, memoryview]]:
    if not 1 <= frame_bytes <= MAX_FRAME_BYTES:
        raise WireError(f"frame_bytes must be in [1, {MAX_FRAME_BYTES}], got {frame_bytes}")
    view = memoryview(data).cast("B")
    yield dump_header(header), view[:frame_bytes]
    for start in range(frame_bytes, len(view), frame_bytes):
        yield b"", view[start : start + frame_bytes]


# -- tensors ---------------------------------------------------------------------------------


class _Packer:
    def __init__(self):
        self.meta: list[dict[str, Any]] = []
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, t: torch.Tensor) -> int:
        if t.dtype not in DTYPE_NAMES:
            raise WireError(f"tensors of dtype {t.dtype} cannot be sent; allowed: {', '.join(DTYPES)}")
        t = t.detach().to("cpu").contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        pad = (-self.size) % _ALIGN
        if pad:
            self.parts.append(b"\0" * pad)
            self.size += pad
        self.meta.append({"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "offset": self.size, "nbytes": len(raw)})
        self.parts.append(raw)
        self.size += len(raw)
        return len(self.meta) - 1

    def value(self, v: Any) -> Any:
        """A payload value as JSON: tensors by reference, numbers inline, lists recursively."""
        if isinstance(v, torch.Tensor):
            return {"t": self.add(v)}
        if isinstance(v, bool):
            return {"b": v}
        if isinstance(v, numbers.Integral):
            return {"i": int(v)}
        if isinstance(v, numbers.Real):
            return {"f": float(v)}
        if isinstance(v, (list, tuple)):
            return {"l": [self.value(x) for x in v], "tuple": isinstance(v, tuple)}
        raise WireError(f"payload values must be tensors, numbers or lists of them, not {type(v).__name__}")

    def data(self) -> bytes:
        return b"".join(self.parts)


class _Unpacker:
    """Builds tensors from validated metadata over one received buffer."""

    def __init__(self, header: dict[str, Any], data: bytearray):
        self.data = data
        metas = header.get("tensors", [])
        if not isinstance(metas, list) or len(metas) > MAX_TENSORS:
            raise WireError(f"'tensors' must be a list of at most {MAX_TENSORS} entries")
        self.metas = [self._check(i, m) for i, m in enumerate(metas)]
        self.used: set[int] = set()

    def _check(self, i: int, m: Any) -> dict[str, Any]:
        if not isinstance(m, dict):
            raise WireError(f"tensor {i}: metadata must be an object")
        dtype = DTYPES.get(m.get("dtype"))  # type: ignore[arg-type]
        if dtype is None:
            raise WireError(f"tensor {i}: dtype {m.get('dtype')!r} is not allowed; allowed: {', '.join(DTYPES)}")
        shape = m.get("shape")
        if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_is_int(d) and d >= 0 for d in shape):
            raise WireError(f"tensor {i}: shape must be a list of at most {MAX_DIMS} non-negative integers")
        offset, nbytes = m.get("offset"), m.get("nbytes")
        if not (_is_int(offset) and _is_int(nbytes) and offset >= 0 and nbytes >= 0):
            raise WireError(f"tensor {i}: offset and nbytes must be non-negative integers")
        itemsize = torch.empty((), dtype=dtype).element_size()
        if math.prod(shape) * itemsize != nbytes:
            raise WireError(f"tensor {i}: shape {shape} of {m['dtype']} needs {math.prod(shape) * itemsize} bytes, "
                            f"the header says {nbytes}")
        if offset % itemsize or offset + nbytes > len(self.data):
            raise WireError(f"tensor {i}: bytes [{offset}, {offset + nbytes}) fall outside the {len(self.data)} data bytes "
                            "or are misaligned")
        return {"dtype": dtype, "shape": tuple(shape), "offset": offset, "nbytes": nbytes}

    def tensor(self, ref: Any, what: str) -> torch.Tensor:
        if not _is_int(ref) or not 0 <= ref < len(self.metas):
            raise WireError(f"{what}: tensor reference {ref!r} is out of range")
        if ref in self.used:
            raise WireError(f"{what}: tensor {ref} is referenced twice")
        self.used.add(ref)
        m = self.metas[ref]
        if m["nbytes"] == 0:
            return torch.zeros(m["shape"], dtype=m["dtype"])
        flat = torch.frombuffer(self.data, dtype=m["dtype"], count=m["nbytes"] // torch.empty((), dtype=m["dtype"]).element_size(),
                                offset=m["offset"])
        return flat.reshape(m["shape"])

    def optional(self, header: dict[str, Any], key: str) -> torch.Tensor | None:
        ref = header.get(key)
        return None if ref is None else self.tensor(ref, key)

    def value(self, v: Any, what: str, depth: int = 0) -> Any:
        if depth > 4 or not isinstance(v, dict) or len(v) not in (1, 2):
            raise WireError(f"{what}: malformed payload value")
        if "t" in v:
            return self.tensor(v["t"], what)
        if "b" in v and isinstance(v["b"], bool):
            return v["b"]
        if "i" in v and _is_int(v["i"]):
            return int(v["i"])
        if "f" in v and isinstance(v["f"], (int, float)) and not isinstance(v["f"], bool):
            return float(v["f"])
        if "l" in v and isinstance(v["l"], list):
            items = [self.value(x, what, depth + 1) for x in v["l"]]
            return tuple(items) if v.get("tuple") else items
        raise WireError(f"{what}: malformed payload value")

    def payload(self, header: dict[str, Any]) -> dict[str, Any]:
        p = header.get("payload", {})
        if not isinstance(p, dict) or not all(isinstance(k, str) for k in p):
            raise WireError("'payload' must be an object with string keys")
        return {k: self.value(v, f"payload {k!r}") for k, v in p.items()}

    def finish(self) -> None:
        unused = set(range(len(self.metas))) - self.used
        if unused:
            raise WireError(f"tensors {sorted(unused)} are described but not referenced")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(header: dict[str, Any], key: str, *, integer: bool = False, minimum: float | None = None) -> Any:
    v = header.get(key)
    ok = _is_int(v) if integer else isinstance(v, (int, float)) and not isinstance(v, bool)
    if not ok or (minimum is not None and v < minimum):
        kind = "an integer" if integer else "a number"
        raise WireError(f"{key!r} must be {kind}" + (f" >= {minimum}" if minimum is not None else "") + f", got {v!r}")
    return v


# -- messages ---------------------------------------------------------------------------------


def encode_broadcast(b: Broadcast) -> Encoded:
    """The shareable part of a task (the per-client fields are added per frame stream)."""
    p = _Packer()
    header = {
        "protocol": PROTOCOL,
        "kind": "broadcast",
        "version": int(b.version),
        "params": None if b.params is None else p.add(b.params),
        "buffers": None if b.buffers is None else p.add(b.buffers),
        "payload": {k: p.value(v) for k, v in b.payload.items()},
        "config": b.config,
    }
    header["tensors"], header["data_bytes"] = p.meta, p.size
    return Encoded(header, p.data())


def decode_broadcast(header: dict[str, Any], data: bytearray) -> Broadcast:
    if header.get("kind") != "broadcast":
        raise WireError(f"expected a broadcast, got {header.get('kind')!r}")
    u = _Unpacker(header, data)
    config = header.get("config", {})
    if not isinstance(config, dict):
        raise WireError("'config' must be an object")
    out = Broadcast(_number(header, "version", integer=True), u.optional(header, "params"), u.optional(header, "buffers"),
                    u.payload(header), dict(config))
    u.finish()
    return out


def encode_update(update: Update, **fields: Any) -> Encoded:
    """An Update with its task fields (round, counter). Full-model uploads send ``params``
    only (the server rebuilds ``delta`` from the broadcast it sent), as they are counted."""
    p = _Packer()
    full = update.params is not None
    header = {
        "protocol": PROTOCOL,
        "kind": "update",
        **fields,
        "client_id": int(update.client_id),
        "base_version": int(update.base_version),
        "num_examples": int(update.num_examples),
        "num_steps": int(update.num_steps),
        "metrics": {k: float(v) for k, v in update.metrics.items()},
        "delta": None if full or update.delta is None else p.add(update.delta),
        "params": p.add(update.params) if full else None,
        "buffers": None if update.buffers is None else p.add(update.buffers),
        "payload": {k: p.value(v) for k, v in update.payload.items()},
    }
    header["tensors"], header["data_bytes"] = p.meta, p.size
    return Encoded(header, p.data())


def decode_update(header: dict[str, Any], data: bytearray, sent_params: torch.Tensor | None = None) -> Update:
    """The Update of a validated header; ``sent_params`` (the broadcast's trainable vector)
    rebuilds ``delta`` for full-model uploads."""
    if header.get("kind") != "update":
        raise WireError(f"expected an update, got {header.get('kind')!r}")
    metrics = header.get("metrics", {})
    if not isinstance(metrics, dict) or len(metrics) > MAX_METRICS or not all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in metrics.items()
    ):
        raise WireError(f"'metrics' must be an object of at most {MAX_METRICS} numbers")
    u = _Unpacker(header, data)
    delta, params = u.optional(header, "delta"), u.optional(header, "params")
    if delta is not None and params is not None:
        raise WireError("an update carries at most one of 'delta' and 'params'")
    # neither: a payload-only upload (Ferret, FRL); the server checks that its method sends one
    if params is not None and sent_params is not None:
        if params.shape != sent_params.shape or params.dtype != sent_params.dtype:
            raise WireError(f"'params' has shape {tuple(params.shape)} and dtype {params.dtype}; expected "
                            f"{tuple(sent_params.shape)} and {sent_params.dtype}")
        delta = params - sent_params
    out = Update(
        client_id=_number(header, "client_id", integer=True, minimum=0),
        base_version=_number(header, "base_version", integer=True),
        delta=delta,
        buffers=u.optional(header, "buffers"),
        num_examples=_number(header, "num_examples", integer=True, minimum=0),
        num_steps=_number(header, "num_steps", integer=True, minimum=0),
        metrics={k: float(v) for k, v in metrics.items()},
        payload=u.payload(header),
        params=params,
    )
    u.finish()
    return out


# -- receiving --------------------------------------------------------------------------------


@dataclass
class Assembler:
    """Rebuilds one message from its frames, enforcing the size cap as bytes arrive."""

    max_data_bytes: int
    header: dict[str, Any] | None = None
    data: bytearray = field(default_factory=bytearray)
    filled: int = 0
    wire_bytes: int = 0

    def first(self, header_raw: bytes) -> dict[str, Any]:
        if not header_raw:
            raise WireError("the first frame of a message must carry its header")
        if len(header_raw) > MAX_HEADER_BYTES:
            raise WireError(f"message header of {len(header_raw)} bytes exceeds the limit of {MAX_HEADER_BYTES}")
        try:
            header = json.loads(header_raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise WireError(f"the message header is not valid JSON ({exc})") from None
        if not isinstance(header, dict):
            raise WireError("the message header must be a JSON object")
        if header.get("protocol") != PROTOCOL:
            raise WireError(f"protocol {header.get('protocol')!r} is not {PROTOCOL!r}; update fedweave on one side")
        size = header.get("data_bytes")
        if not _is_int(size) or size < 0:
            raise WireError("'data_bytes' must be a non-negative integer")
        if size > self.max_data_bytes:
            raise WireError(f"the message declares {size} data bytes; the limit here is {self.max_data_bytes}")
        self.header = header
        self.data = bytearray(size)
        return header

    def add(self, data: bytes) -> None:
        n = len(data)
        if self.filled + n > len(self.data):
            raise WireError(f"the message carries more data than the {len(self.data)} bytes its header declares")
        self.data[self.filled : self.filled + n] = data
        self.filled += n

    def feed(self, header_raw: bytes, data: bytes, frame_size: int) -> None:
        self.wire_bytes += frame_size
        if self.header is None:
            self.first(header_raw)
        elif header_raw:
            raise WireError("only the first frame of a message may carry a header")
        self.add(data)

    def done(self) -> tuple[dict[str, Any], bytearray]:
        if self.header is None:
            raise WireError("the message was empty (no header frame)")
        if self.filled != len(self.data):
            raise WireError(f"the message ended after {self.filled} of its {len(self.data)} declared data bytes")
        return self.header, self.data


def assemble(frames: Iterable[Any], max_data_bytes: int) -> tuple[dict[str, Any], bytearray, int]:
    """Read protobuf ``Frame`` messages to the end: ``(header, data, wire bytes)``."""
    a = Assembler(max_data_bytes)
    for f in frames:
        a.feed(f.header, f.data, f.ByteSize())
    header, data = a.done()
    return header, data, a.wire_bytes
