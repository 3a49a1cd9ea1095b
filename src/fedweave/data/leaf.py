"""The ``leaf`` source: LEAF's JSON files, one client per LEAF user.

LEAF (Caldas et al. 2018, *LEAF: A Benchmark for Federated Settings*) stores each
data set as JSON files of the form::

    {"users": ["f0001_41", ...], "num_samples": [154, ...],
     "user_data": {"f0001_41": {"x": [...], "y": [...]}, ...}}

usually split into ``train/`` and ``test/`` folders (``data/<dataset>/data/train``
after LEAF's preprocessing). ``data.root`` may point at the folder holding ``train/``
(and optionally ``test/``), at its parent holding ``data/train``, or at a folder of JSON
files with no split (``all_data/``; fedweave then carves the test split). Every
``.json`` file of a folder is read, in file-name order.

Examples become tensors as follows (``data.name`` picks the layout; by default it is
detected from the first example):

``femnist``
    ``x``: 784 floats, a 28x28 image → ``[1, 28, 28]``; ``y``: class 0..61 (62 classes).
``shakespeare``
    ``x``: a string of characters (80 in LEAF), ``y``: the next character. Characters
    map to their index in LEAF's 80-character vocabulary (:data:`ALL_LETTERS`), so
    ``x`` is ``[seq_len]`` character indices (stored as floats, like every input) and
    ``y`` one of 80 classes. A character outside the vocabulary is an error.
``sent140``
    ``x``: LEAF's raw tweet record ``[id, date, query, user, text]`` (or the text
    alone), ``y``: sentiment 0/1. The text becomes a hashed bag of words: lower-cased
    tokens of letters, digits and apostrophes are counted into :data:`SENT140_DIM`
    buckets chosen by CRC-32 of the token (no vocabulary file, stable across runs and
    machines).
``synthetic``
    ``x``: a list of numbers (LEAF's Synthetic data set, or any numeric features), ``y``:
    an integer class.

The natural partition (``data.partition.kind: natural``) gives each training user its
own client, numbered in the order users appear in the training files. The test files
are pooled into the official test set (their users may differ from the training
users, as with LEAF's user-based split). Any problem -- no JSON files, a file that is not
valid JSON or lacks ``users``/``num_samples``/``user_data``, counts that disagree,
examples of the wrong shape -- raises DataError naming the file, the user and the fix.
"""

from __future__ import annotations

import json
import math
import os
import re
import string
import zlib
from pathlib import Path

import numpy as np
import torch

from fedweave.core.errors import ConfigError, DataError
from fedweave.data.sources import DataSource, register_source

#: LEAF's Shakespeare vocabulary: the 80 characters, in LEAF's index order.
ALL_LETTERS = "\n !\"&'(),-.0123456789:;>?" + string.ascii_uppercase + "[]" + string.ascii_lowercase + "}"
_LETTER_INDEX = {c: i for i, c in enumerate(ALL_LETTERS)}

#: Number of hashed bag-of-words buckets of the Sent140 text features.
SENT140_DIM = 1024
_TOKEN = re.compile(r"[a-z0-9']+")

LEAF_NAMES = {
    "femnist": "28x28 handwritten characters, 62 classes",
    "shakespeare": "next-character prediction over LEAF's 80-character vocabulary",
    "sent140": "tweet sentiment (2 classes), text as a hashed bag of words",
    "synthetic": "numeric feature vectors with integer classes",
}

FEMNIST_CLASSES = 62
FEMNIST_PIXELS = 784


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------


def _json_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".json")


def find_leaf_folders(root) -> tuple[Path, Path | None]:
    """The folder of training JSON files and the test folder (or None)."""
    if root is None or str(root) == "":
        raise DataError(
            "data.root must be set for source 'leaf': point it at the folder holding LEAF's train/ and test/ "
            "folders (data/<dataset>/data after LEAF's preprocessing)."
        )
    root = Path(os.fspath(root)).expanduser()
    if not root.exists():
        raise DataError(
            f"The LEAF folder {root} does not exist. Set data.root to the folder holding LEAF's train/ and test/ "
            f"folders, after running LEAF's preprocessing (e.g. ./preprocess.sh in data/femnist)."
        )
    if not root.is_dir():
        raise DataError(f"data.root for source 'leaf' must be a folder, but {root} is a file.")
    for base in (root, root / "data"):
        train = base / "train"
        if train.is_dir():
            if not _json_files(train):
                raise DataError(
                    f"The LEAF training folder {train} holds no .json files. Run LEAF's preprocessing to create "
                    f"them, or point data.root at the folder whose train/ holds them."
                )
            test = base / "test"
            if test.exists():
                if not test.is_dir() or not _json_files(test):
                    raise DataError(
                        f"The LEAF test folder {test} holds no .json files while {train} does; the split is "
                        f"incomplete. Re-run LEAF's split step, or remove {test} to let fedweave carve a test split."
                    )
                return train, test
            return train, None
    if _json_files(root):
        return root, None
    raise DataError(
        f"Found no LEAF data in {root}: expected a train/ folder (and test/) of .json files, data/train/, or .json "
        f"files directly in it. Point data.root at LEAF's data/<dataset>/data folder."
    )


def read_leaf_file(path: Path) -> dict[str, tuple[list, list]]:
    """``{user: (x, y)}`` of one LEAF JSON file, in the order of its ``users`` list."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"Could not read the LEAF file {path}: {exc}.") from None
    except json.JSONDecodeError as exc:
        raise DataError(
            f"The LEAF file {path} is not valid JSON ({exc}); it is probably truncated. Re-run LEAF's preprocessing."
        ) from None
    if not isinstance(doc, dict):
        raise DataError(f"The LEAF file {path} holds a {type(doc).__name__}, not an object with users/user_data.")
    missing = [k for k in ("users", "num_samples", "user_data") if k not in doc]
    if missing:
        raise DataError(
            f"The LEAF file {path} lacks {', '.join(map(repr, missing))}; a LEAF file has 'users', 'num_samples' and "
            f"'user_data'. Is it a LEAF file?"
        )
    users, counts, data = doc["users"], doc["num_samples"], doc["user_data"]
    if not isinstance(users, list) or not isinstance(counts, list) or not isinstance(data, dict):
        raise DataError(f"{path}: 'users' and 'num_samples' must be lists and 'user_data' an object.")
    if len(users) != len(counts):
        raise DataError(
            f"{path} lists {len(users)} users but {len(counts)} num_samples; they must match one to one. The file "
            f"is inconsistent; re-run LEAF's preprocessing."
        )
    if len(set(map(str, users))) != len(users):
        raise DataError(f"{path} lists a user twice in 'users'.")
    extra = sorted(set(data) - set(map(str, users)))
    if extra:
        raise DataError(
            f"{path}: user_data has user(s) not listed in 'users' ({', '.join(extra[:3])}"
            f"{', ...' if len(extra) > 3 else ''}); the file is inconsistent."
        )
    out: dict[str, tuple[list, list]] = {}
    for user, count in zip(users, counts):
        user = str(user)
        entry = data.get(user)
        if not isinstance(entry, dict) or "x" not in entry or "y" not in entry:
            raise DataError(f"{path}: user {user!r} is listed in 'users' but has no user_data entry with 'x' and 'y'.")
        x, y = entry["x"], entry["y"]
        if not isinstance(x, list) or not isinstance(y, list):
            raise DataError(f"{path}: user {user!r}: 'x' and 'y' must be lists.")
        if len(x) != len(y):
            raise DataError(f"{path}: user {user!r} has {len(x)} inputs but {len(y)} labels; they must match.")
        if isinstance(count, bool) or not isinstance(count, (int, float)) or count != len(x):
            raise DataError(
                f"{path}: num_samples says user {user!r} has {count!r} examples, but user_data holds {len(x)}. "
                f"The file is inconsistent; re-run LEAF's preprocessing."
            )
        out[user] = (x, y)
    return out


def _read_folder(folder: Path) -> tuple[list[str], dict[str, tuple[list, list]], dict[str, Path]]:
    order: list[str] = []
    users: dict[str, tuple[list, list]] = {}
    where: dict[str, Path] = {}
    for path in _json_files(folder):
        for user, xy in read_leaf_file(path).items():
            if user in users:
                raise DataError(
                    f"User {user!r} appears in both {where[user]} and {path}; each user must be in one file of a "
                    f"split. Remove the duplicate file."
                )
            order.append(user)
            users[user] = xy
            where[user] = path
    return order, users, where


# --------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def detect_leaf_name(x) -> str:
    """The LEAF layout of example input ``x``."""
    if isinstance(x, str):
        return "shakespeare"
    if isinstance(x, list) and x:
        if any(isinstance(v, str) for v in x):
            return "sent140"
        if all(_is_number(v) for v in x):
            return "femnist" if len(x) == FEMNIST_PIXELS else "synthetic"
    raise DataError(
        f"Cannot tell which LEAF data set holds inputs like {str(x)[:60]!r}; set data.name to one of "
        f"{', '.join(LEAF_NAMES)}. (CelebA and Reddit, whose JSON holds file names or token lists, are not supported.)"
    )


def _labels(name: str, y: list, where: str) -> np.ndarray:
    if name == "shakespeare":
        out = []
        for c in y:
            if not isinstance(c, str) or len(c) != 1 or c not in _LETTER_INDEX:
                raise DataError(
                    f"{where}: label {c!r} is not a character of LEAF's Shakespeare vocabulary; every 'y' must be "
                    f"one such character."
                )
            out.append(_LETTER_INDEX[c])
        return np.asarray(out, dtype=np.int64)
    out = []
    for v in y:
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            v = int(v)
        if not _is_number(v) or not math.isfinite(v) or v != int(v) or v < 0:
            raise DataError(f"{where}: label {v!r} is not a non-negative integer class.")
        out.append(int(v))
    return np.asarray(out, dtype=np.int64)


def _text(x) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, list):
        texts = [v for v in x if isinstance(v, str)]
        if texts:
            return texts[-1]  # LEAF's record: [id, date, query, user, text]
    raise DataError(f"A Sent140 input must be LEAF's tweet record [id, date, query, user, text] or a string; got {x!r:.60}.")


def hashed_bag_of_words(text: str, dim: int = SENT140_DIM) -> np.ndarray:
    """Token counts of ``text`` in ``dim`` buckets chosen by CRC-32 of each token."""
    vec = np.zeros(dim, dtype=np.float32)
    for token in _TOKEN.findall(text.lower()):
        vec[zlib.crc32(token.encode("utf-8")) % dim] += 1.0
    return vec


def _inputs(name: str, x: list, where: str, length: int | None) -> np.ndarray:
    if name == "shakespeare":
        rows = []
        for s in x:
            if not isinstance(s, str):
                raise DataError(f"{where}: a Shakespeare input must be a string; got {type(s).__name__}.")
            if length is not None and len(s) != length:
                raise DataError(
                    f"{where}: input sequences have different lengths ({len(s)} and {length}); LEAF's Shakespeare "
                    f"inputs all have the same length (80)."
                )
            bad = sorted({c for c in s if c not in _LETTER_INDEX})
            if bad:
                raise DataError(
                    f"{where}: character(s) {''.join(bad)!r} are not in LEAF's 80-character Shakespeare vocabulary."
                )
            rows.append([_LETTER_INDEX[c] for c in s])
        return np.asarray(rows, dtype=np.float32).reshape(len(x), -1)
    if name == "sent140":
        if not x:
            return np.zeros((0, SENT140_DIM), dtype=np.float32)
        return np.stack([hashed_bag_of_words(_text(v)) for v in x])
    if name == "femnist":
        wrong = sorted({len(v) if isinstance(v, list) else -1 for v in x} - {FEMNIST_PIXELS})
        if wrong:
            found = "non-list inputs" if wrong == [-1] else f"inputs of {max(wrong)} values"
            raise DataError(
                f"{where}: FEMNIST inputs must have 784 values (28x28 pixels); found {found}. Check data.name."
            )
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError):
        raise DataError(
            f"{where}: the inputs are not lists of numbers of one length, as data.name={name!r} expects."
        ) from None
    if arr.size == 0:
        return arr.reshape(0, length or 0)
    if arr.ndim != 2:
        raise DataError(f"{where}: each input must be a flat list of numbers; got shape {arr.shape[1:]}.")
    if length is not None and arr.shape[1] != length:
        raise DataError(f"{where}: inputs have {arr.shape[1]} values, but earlier ones have {length}; all must match.")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{where}: inputs contain NaN or infinite values.")
    return arr


def _convert(name: str, order: list[str], users: dict, where: dict[str, Path], length: int | None):
    xs, ys, owners = [], [], []
    for i, user in enumerate(order):
        x, y = users[user]
        if not x:
            continue
        loc = f"{where[user]}, user {user!r}"
        xi = _inputs(name, x, loc, length)
        if name != "sent140":
            length = xi.shape[1]
        xs.append(xi)
        ys.append(_labels(name, y, loc))
        owners.append(np.full(len(x), i, dtype=np.int64))
    return xs, ys, owners, length


def load_leaf(root, name: str | None = None) -> DataSource:
    """Load LEAF JSON files from ``root`` as a DataSource with per-user client ids."""
    if name is not None and name not in LEAF_NAMES:
        raise ConfigError(
            f"Unknown LEAF data set {name!r} in data.name. Allowed: {', '.join(LEAF_NAMES)} (or leave data.name unset "
            f"to detect it)."
        )
    train_dir, test_dir = find_leaf_folders(root)
    order, users, where = _read_folder(train_dir)
    first = next((users[u][0][0] for u in order if users[u][0]), None)
    if first is None:
        raise DataError(f"The LEAF training files in {train_dir} hold no examples (every user has 0 samples).")
    kind = name or detect_leaf_name(first)
    xs, ys, owners, length = _convert(kind, order, users, where, None)
    x, y, cid = np.concatenate(xs), np.concatenate(ys), np.concatenate(owners)
    x_test = y_test = None
    if test_dir is not None:
        t_order, t_users, t_where = _read_folder(test_dir)
        txs, tys, _, _ = _convert(kind, t_order, t_users, t_where, length)
        if txs:
            x_test, y_test = np.concatenate(txs), np.concatenate(tys)
        else:
            raise DataError(
                f"The LEAF test files in {test_dir} hold no examples; re-run LEAF's split step, or remove {test_dir}."
            )
    fixed = {"femnist": FEMNIST_CLASSES, "shakespeare": len(ALL_LETTERS)}
    top = int(max(y.max(), -1 if y_test is None else y_test.max()))
    num_classes = fixed.get(kind, max(top + 1, 2))
    if top >= num_classes:
        raise DataError(
            f"The LEAF {kind} files contain label {top}, but {kind} has classes 0..{num_classes - 1}. Check data.name."
        )
    shape = (1, 28, 28) if kind == "femnist" else (int(x.shape[1]),)

    def tensors(a, b):
        return (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32).reshape(-1, *shape)),
                torch.from_numpy(np.ascontiguousarray(b, dtype=np.int64)))

    xt, yt = tensors(x, y)
    xs_t = ys_t = None
    if x_test is not None:
        xs_t, ys_t = tensors(x_test, y_test)
    return DataSource(f"leaf/{kind}", xt, yt, xs_t, ys_t, num_classes, shape, cid)


register_source("leaf", lambda name, o: load_leaf(o.root, o.data_name),
                description="LEAF's JSON files (FEMNIST, Shakespeare, Sent140, Synthetic; data.name) in data.root, "
                "one client per LEAF user")
