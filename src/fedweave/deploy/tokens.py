"""Client tokens: one secret per client, bound to its client id; the server keeps hashes only.

``fedweave tokens new --clients N --out FILE`` writes FILE (JSON) with, for every client,
its id, the SHA-256 of its token and an optional bound on the number of training
examples it may claim, and prints the plaintext tokens once, one ``<client-id> <token>``
line per client. Tokens are 256-bit random strings, so a plain (unsalted) hash is enough:
nobody can guess one from its hash, and looking a token up costs one hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ConfigError
from ..rundir import atomic_write_text

FORMAT = 1
PREFIX = "fwt_"


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenEntry:
    client_id: int
    sha256: str
    max_examples: int | None = None


class TokenStore:
    """Hashes of the valid tokens, each bound to a client id."""

    def __init__(self, entries: list[TokenEntry]):
        self.entries = {e.client_id: e for e in entries}
        if len(self.entries) != len(entries):
            raise ConfigError("The token file binds two tokens to the same client id.")
        self._by_hash = {e.sha256: e.client_id for e in entries}
        if len(self._by_hash) != len(entries):
            raise ConfigError("The token file holds the same token hash twice.")

    @classmethod
    def generate(cls, num_clients: int, first_id: int = 0, max_examples: int | None = None) -> tuple["TokenStore", dict[int, str]]:
        if num_clients < 1:
            raise ConfigError(f"--clients must be at least 1, got {num_clients}.")
        if first_id < 0:
            raise ConfigError(f"--first-id must be >= 0, got {first_id}.")
        tokens = {cid: new_token() for cid in range(first_id, first_id + num_clients)}
        return cls([TokenEntry(cid, hash_token(t), max_examples) for cid, t in tokens.items()]), tokens

    def client_id(self, token: str | None) -> int | None:
        """The client a token belongs to, or None for a missing or unknown token."""
        if not token:
            return None
        return self._by_hash.get(hash_token(token))

    def max_examples(self, client_id: int) -> int | None:
        e = self.entries.get(client_id)
        return None if e is None else e.max_examples

    def __len__(self) -> int:
        return len(self.entries)

    def to_json(self) -> str:
        clients = [{"client_id": e.client_id, "sha256": e.sha256, "max_examples": e.max_examples}
                   for e in sorted(self.entries.values(), key=lambda e: e.client_id)]
        return json.dumps({"format": FORMAT, "hash": "sha256", "clients": clients}, indent=1) + "\n"

    def save(self, path: str | Path, overwrite: bool = False) -> None:
        path = Path(path)
        if path.exists() and not overwrite:
            raise ConfigError(f"{str(path)!r} exists; choose another file or pass --force to replace it "
                              "(the tokens in it stop working).")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, self.to_json())
        os.chmod(path, 0o600)

    @classmethod
    def load(cls, path: str | Path) -> "TokenStore":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Token file {str(path)!r} does not exist; make one with `fedweave tokens new`.")
        try:
            raw = json.loads(path.read_text())
        except ValueError as exc:
            raise ConfigError(f"Token file {str(path)!r} is not valid JSON: {exc}") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("hash") != "sha256":
            raise ConfigError(f"Token file {str(path)!r} is not a fedweave token file (format {FORMAT}, sha256).")
        entries = []
        for i, c in enumerate(raw.get("clients") or []):
            ok = (isinstance(c, dict) and isinstance(c.get("client_id"), int) and c["client_id"] >= 0
                  and isinstance(c.get("sha256"), str) and len(c["sha256"]) == 64
                  and (c.get("max_examples") is None or (isinstance(c["max_examples"], int) and c["max_examples"] >= 0)))
            if not ok:
                raise ConfigError(f"Token file {str(path)!r}: entry {i} needs client_id (>= 0), sha256 (64 hex digits) "
                                  "and optionally max_examples (>= 0).")
            entries.append(TokenEntry(c["client_id"], c["sha256"].lower(), c.get("max_examples")))
        if not entries:
            raise ConfigError(f"Token file {str(path)!r} holds no clients.")
        return cls(entries)
