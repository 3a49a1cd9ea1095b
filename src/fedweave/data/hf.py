"""The ``hf`` source: a Hugging Face ``datasets`` data set, offline.

Two ways to point at the data (``pip install "fedweave[hf]"``):

* ``data.root``: a folder written by ``Dataset.save_to_disk`` or
  ``DatasetDict.save_to_disk``, read with ``datasets.load_from_disk``;
* ``data.name``: a Hub name (``mnist``, ``uoft-cs/cifar10``) already in the local
  ``datasets`` cache (``~/.cache/huggingface/datasets``, or ``data.root`` when it is not
  a save_to_disk folder), read with ``datasets.load_dataset(name,
  download_mode="reuse_cache_if_exists")`` with the Hub switched to offline mode for the
  call, so nothing is ever downloaded. A data set that is not cached is reported with
  the command that caches it.

``data.split`` names the training split (default ``train``, or the only split); a split
named ``test`` becomes the official test set. ``data.columns`` names the columns:
``x`` the inputs (default: the first of ``image``, ``img``, ``pixel_values``, ``x``,
``features``, ``input``, or the only column besides the label and client columns), ``y``
the labels (default: ``label``, ``labels``, ``y``, ``fine_label``) and ``client`` an
optional natural client id (for ``data.partition.kind: natural``).

Conversion: images (``Image`` features, or uint8 arrays of rank 2/3) become float32
``[C, H, W]`` scaled to [0, 1] (channels-last arrays are transposed); other numeric
arrays and lists become float32 as they are (one example = one array of fixed shape);
a scalar column becomes one feature. A text column is turned into int64 token ids
``[N, data.max_length]`` (padded with the pad token, truncated) by the tokenizer saved in
``data.tokenizer`` — by default the folder of an ``hf:<folder>`` model — read with
``local_files_only``. Labels come from a ``ClassLabel`` (its class count),
integers (max + 1 classes) or strings (sorted and numbered). Text inputs without a
tokenizer are refused.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedweave.core.errors import DataError
from fedweave.data.sources import DataSource, register_source

X_COLUMNS = ("image", "img", "pixel_values", "x", "features", "input", "text", "sentence")
Y_COLUMNS = ("label", "labels", "y", "fine_label")


def _datasets():
    try:
        import datasets
    except ImportError:
        raise DataError(
            "The 'hf' source needs the Hugging Face datasets package, which is not installed. Install it with: "
            'pip install "fedweave[hf]"'
        ) from None
    return datasets


@contextlib.contextmanager
def hub_offline():
    """Switch the ``datasets`` and ``huggingface_hub`` libraries to offline mode for a block."""
    import datasets.config as dconfig

    targets = [(dconfig, "HF_HUB_OFFLINE"), (dconfig, "HF_DATASETS_OFFLINE")]
    try:
        import huggingface_hub.constants as hconst

        targets.append((hconst, "HF_HUB_OFFLINE"))
    except ImportError:  # pragma: no cover - datasets depends on huggingface_hub
        pass
    saved = [(mod, attr, getattr(mod, attr)) for mod, attr in targets if hasattr(mod, attr)]
    env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    try:
        for mod, attr, _ in saved:
            setattr(mod, attr, True)
        for k in env:
            os.environ[k] = "1"
        yield
    finally:
        for mod, attr, value in saved:
            setattr(mod, attr, value)
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _is_saved_folder(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json", "dataset_info.json"))


def _cache_hint(name: str) -> str:
    return (
        f"Cache it once on a machine with internet access: python -c \"import datasets; "
        f"datasets.load_dataset('{name}')\" (then copy ~/.cache/huggingface/datasets), or save it with "
        f"load_dataset('{name}').save_to_disk('FOLDER') and set data.root: FOLDER."
    )


def open_hf(root, name: str | None):
    """The ``Dataset`` or ``DatasetDict`` that ``data.root`` / ``data.name`` point at."""
    datasets = _datasets()
    path = None if root is None or str(root) == "" else Path(os.fspath(root)).expanduser()
    if path is not None and not path.exists():
        raise DataError(
            f"data.root={path} for source 'hf' does not exist. Point it at a folder written by save_to_disk, or "
            f"unset it and give data.name to read the dataset from the local Hugging Face cache."
        )
    if path is not None and _is_saved_folder(path):
        try:
            return datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError, OSError) as exc:
            raise DataError(
                f"Could not read the saved Hugging Face dataset in {path}: {exc}. Save it again with "
                f"save_to_disk(FOLDER)."
            ) from None
    if not name:
        where = f"{path} is not a folder written by save_to_disk (no dataset_dict.json or state.json)" if path else \
            "neither data.root nor data.name is set"
        raise DataError(
            f"Source 'hf': {where}. Set data.root to a save_to_disk folder, or data.name to a dataset in the local "
            f"Hugging Face cache (e.g. data.name: mnist)."
        )
    cache_dir = str(path) if path is not None else None
    with hub_offline():
        try:
            return datasets.load_dataset(name, cache_dir=cache_dir, download_mode="reuse_cache_if_exists")
        except Exception as exc:  # datasets raises ConnectionError, FileNotFoundError, DatasetNotFoundError...
            where = cache_dir or "the default cache (HF_DATASETS_CACHE, ~/.cache/huggingface/datasets)"
            raise DataError(
                f"The Hugging Face dataset {name!r} is not in {where}, and fedweave never downloads "
                f"({type(exc).__name__}: {str(exc)[:200]}). {_cache_hint(name)}"
            ) from None


def _pick_split(obj, split: str | None):
    """(training Dataset, test Dataset or None, split name)."""
    datasets = _datasets()
    if isinstance(obj, datasets.Dataset):
        if split not in (None, "train") and str(obj.split) != split:
            raise DataError(
                f"The saved dataset is a single split ({obj.split or 'unnamed'}), so data.split={split!r} does not "
                f"apply; unset data.split."
            )
        return obj, None, str(obj.split or "train")
    names = list(obj.keys())
    if split is None:
        if "train" in names:
            split = "train"
        elif len(names) == 1:
            split = names[0]
        else:
            raise DataError(
                f"The dataset has splits {', '.join(names)} and none is called 'train'; set data.split to the "
                f"training split."
            )
    if split not in names:
        raise DataError(f"The dataset has no split {split!r}; its splits: {', '.join(names)}. Fix data.split.")
    test = obj["test"] if "test" in names and split != "test" else None
    return obj[split], test, split


def _pick_columns(ds, columns: dict[str, Any] | None) -> tuple[str, str, str | None]:
    cols = list(ds.column_names)
    given = {k: v for k, v in (columns or {}).items() if v}
    for key, col in given.items():
        if col not in cols:
            raise DataError(
                f"data.columns.{key}={col!r} is not a column of the dataset; its columns: {', '.join(cols)}."
            )
    y = given.get("y") or next((c for c in Y_COLUMNS if c in cols), None)
    if y is None:
        raise DataError(f"Could not find the label column among {', '.join(cols)}; set data.columns.y.")
    client = given.get("client")
    x = given.get("x") or next((c for c in X_COLUMNS if c in cols), None)
    if x is None:
        rest = [c for c in cols if c not in (y, client)]
        if len(rest) != 1:
            raise DataError(
                f"Could not tell which column holds the inputs among {', '.join(rest) or 'none'}; set data.columns.x."
            )
        x = rest[0]
    return x, y, client


def _as_array(ds, col: str) -> Any:
    return ds.select_columns([col]).with_format("numpy")[:][col]


def _value_dtype(feature) -> str | None:
    """The element dtype of a (possibly nested) feature: ``uint8`` for lists of byte images."""
    for _ in range(8):
        dtype = getattr(feature, "dtype", None)
        if isinstance(dtype, str) and not hasattr(feature, "feature"):
            return dtype
        inner = getattr(feature, "feature", None)
        if inner is None:
            return dtype if isinstance(dtype, str) else None
        feature = inner
    return None


def load_tokenizer(folder: str):
    """The tokenizer saved in ``folder`` (``save_pretrained``), read with ``local_files_only``."""
    path = Path(os.fspath(folder)).expanduser()
    if not path.is_dir():
        raise DataError(f"data.tokenizer: the folder {path} does not exist. Give a folder written by a tokenizer's "
                        "save_pretrained (by default the hf: model's own folder).")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DataError('Tokenising text needs transformers: pip install "fedweave[lora]"') from None
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise DataError(f"data.tokenizer: {path} holds no tokenizer that transformers can read "
                        f"({type(exc).__name__}: {str(exc)[:200]}).") from None
    if tok.pad_token_id is None:
        raise DataError(f"data.tokenizer: the tokenizer in {path} has no padding token, which fixed-length examples "
                        "need; set one (tokenizer.pad_token = ...) and save it again.")
    return tok


def _tokenize(ds, col: str, tokenizer, max_length: int, where: str) -> np.ndarray:
    texts = [str(t) for t in ds[col]]
    ids = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    arr = np.asarray(ids["input_ids"], dtype=np.int64)
    if arr.shape != (len(texts), max_length):
        raise DataError(f"{where}: tokenising column {col!r} gave shape {arr.shape}, not [examples, {max_length}].")
    return arr


def _inputs(ds, col: str, where: str, tokenizer=None, max_length: int = 128) -> np.ndarray:
    datasets = _datasets()
    feature = ds.features[col]
    is_image = isinstance(feature, datasets.Image)
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        if tokenizer is not None:  # token ids [N, max_length], padded with the tokenizer's pad token
            return _tokenize(ds, col, tokenizer, max_length, where)
        raise DataError(
            f"{where}: column {col!r} holds text. The 'hf' source needs numeric inputs or images, or a tokenizer: "
            "set data.tokenizer to a save_pretrained folder (an hf:<folder> model's own is used by default), or "
            "tokenise the text into numbers first (ds.map(...)) and save the result with save_to_disk."
        )
    try:
        values = _as_array(ds, col)
    except Exception as exc:  # decoding errors of images, ragged arrays...
        raise DataError(f"{where}: could not read column {col!r} as arrays ({type(exc).__name__}: {exc}).") from None
    if isinstance(values, list) or (isinstance(values, np.ndarray) and values.dtype == object):
        try:
            values = np.stack([np.asarray(v) for v in values])
        except ValueError:
            raise DataError(
                f"{where}: the examples of column {col!r} have different shapes; resize them to one shape first."
            ) from None
    arr = np.asarray(values)
    if arr.dtype.kind in "US":
        raise DataError(f"{where}: column {col!r} holds text; tokenise it into numbers first.")
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{where}: column {col!r} has values of type {arr.dtype}, not numbers or images.")
    if not is_image and _value_dtype(feature) == "uint8" and arr.dtype.kind in "iu":
        arr = arr.astype(np.uint8)  # numpy formatting widens nested uint8 lists to int64
    if is_image or (arr.dtype == np.uint8 and arr.ndim in (3, 4)):
        if arr.ndim == 3:  # [N, H, W] grey images
            arr = arr[:, None]
        elif arr.ndim == 4 and arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3, 4):
            arr = arr.transpose(0, 3, 1, 2)  # channels last -> first
        scale = 255.0 if arr.dtype == np.uint8 or is_image else 1.0
        arr = arr.astype(np.float32) / scale
    else:
        arr = arr.astype(np.float32)
        if arr.ndim == 1:
            arr = arr[:, None]
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{where}: column {col!r} contains NaN or infinite values.")
    return arr


def _labels(ds, col: str, where: str, names: list | None) -> tuple[np.ndarray, list | None]:
    datasets = _datasets()
    feature = ds.features[col]
    values = np.asarray(_as_array(ds, col))
    if isinstance(feature, datasets.ClassLabel):
        return values.astype(np.int64), list(feature.names)
    if values.dtype.kind in "USO":
        if names is None:
            names = sorted({str(v) for v in values})
        index = {n: i for i, n in enumerate(names)}
        unknown = sorted({str(v) for v in values} - set(index))
        if unknown:
            raise DataError(f"{where}: labels {unknown[:3]} do not occur in the training split.")
        return np.asarray([index[str(v)] for v in values], dtype=np.int64), names
    if values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.all(np.mod(values, 1) == 0):
        values = values.astype(np.int64)
    if values.dtype.kind not in "iu" or values.ndim != 1:
        raise DataError(
            f"{where}: label column {col!r} must hold one integer class per example; found {values.dtype} of shape "
            f"{values.shape[1:] or 'scalar'}. Pick the label column with data.columns.y."
        )
    if values.size and values.min() < 0:
        raise DataError(f"{where}: label column {col!r} has negative values; classes must be 0, 1, 2, ...")
    return values.astype(np.int64), names


def load_hf(root, name: str | None = None, *, split: str | None = None, columns: dict | None = None,
            tokenizer: str | None = None, max_length: int = 128) -> DataSource:
    """Load a cached or saved Hugging Face dataset as a DataSource."""
    obj = open_hf(root, name)
    tok = load_tokenizer(tokenizer) if tokenizer else None
    train, test, split_name = _pick_split(obj, split)
    x_col, y_col, c_col = _pick_columns(train, columns)
    label = name or Path(os.fspath(root)).name
    where = f"Hugging Face dataset {label!r}, split {split_name!r}"
    if len(train) == 0:
        raise DataError(f"{where} has no examples.")
    x = _inputs(train, x_col, where, tok, max_length)
    y, class_names = _labels(train, y_col, where, None)
    num_classes = len(class_names) if class_names is not None else int(y.max()) + 1
    client_ids = None
    if c_col is not None:
        raw = np.asarray(_as_array(train, c_col))
        _, client_ids = np.unique(raw.astype(str) if raw.dtype.kind in "USO" else raw, return_inverse=True)
        client_ids = client_ids.reshape(-1).astype(np.int64)
    x_test = y_test = None
    if test is not None:
        missing = [c for c in (x_col, y_col) if c not in test.column_names]
        if missing:
            raise DataError(f"The 'test' split of {label!r} lacks column(s) {', '.join(missing)}.")
        twhere = f"Hugging Face dataset {label!r}, split 'test'"
        x_test = _inputs(test, x_col, twhere, tok, max_length)
        y_test, _ = _labels(test, y_col, twhere, class_names)
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(
                f"The 'test' examples of {label!r} have shape {x_test.shape[1:]} but the training ones {x.shape[1:]}."
            )
        if class_names is None and y_test.size:
            num_classes = max(num_classes, int(y_test.max()) + 1)
    if num_classes < 1 or (y.size and y.max() >= num_classes):
        raise DataError(f"{where}: labels exceed the {num_classes} classes of its ClassLabel feature.")
    xt = torch.from_numpy(np.ascontiguousarray(x))
    yt = torch.from_numpy(np.ascontiguousarray(y))
    xs = ys = None
    if x_test is not None:
        xs, ys = torch.from_numpy(np.ascontiguousarray(x_test)), torch.from_numpy(np.ascontiguousarray(y_test))
    return DataSource(f"hf/{label}", xt, yt, xs, ys, int(num_classes), tuple(int(s) for s in x.shape[1:]), client_ids)


register_source("hf", lambda name, o: load_hf(o.root, o.data_name, split=o.split, columns=o.columns,
                                              tokenizer=o.tokenizer, max_length=o.max_length),
                description="a Hugging Face dataset: a save_to_disk folder in data.root, or data.name from the local "
                "cache (never downloads); data.split, data.columns")
