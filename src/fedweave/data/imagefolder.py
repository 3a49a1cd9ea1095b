"""The ``imagefolder`` source: one folder per class of PNG or JPEG files (``data.root``).

Layout: ``data.root/<class>/<image>.png|.jpg|.jpeg``; classes are the sub-folder names in
sorted order (class 0 is the first). When ``data.root`` holds exactly the two folders
``train`` and ``test``, each laid out so, ``test`` is the official test set (its classes
must be among ``train``'s). Every image must have the size of the first; images are
read with Pillow as greyscale (``[1, H, W]``) when all of them are greyscale, else as RGB
(``[3, H, W]``), scaled to [0, 1] in float32.

The images are decoded once and cached as an ``.npz`` of uint8 arrays in ``data.cache``
(default: ``fedweave-cache`` in the system's temporary folder), never inside
``data.root``. The cache file is named by a hash of the root's absolute path and every
image's relative path, size and modification time, so an edited, added or removed image
means a new cache file and a fresh read.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from fedweave.core.errors import DataError
from fedweave.data.sources import DataSource, register_source

EXTENSIONS = (".png", ".jpg", ".jpeg")


def _listing(folder: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = [(f, c) for c, name in enumerate(classes) for f in sorted((folder / name).iterdir())
             if f.is_file() and f.suffix.lower() in EXTENSIONS]
    return classes, files


def _read(files: list[Path], where: str) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise DataError('The imagefolder source reads images with Pillow: pip install pillow') from None
    images, size = [], None
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                images.append(im.copy())
        except OSError as exc:
            raise DataError(f"{where}: could not read the image {f} ({exc}).") from None
        if size is None:
            size = images[-1].size
        elif images[-1].size != size:
            raise DataError(f"{where}: {f} is {images[-1].size[0]}x{images[-1].size[1]} pixels but {files[0]} is "
                            f"{size[0]}x{size[1]}; resize the images to one size first.")
    grey = all(im.mode in ("L", "1", "I;16") for im in images)
    arrays = [np.asarray(im.convert("L" if grey else "RGB"), dtype=np.uint8) for im in images]
    x = np.stack(arrays)
    return x[:, None] if grey else x.transpose(0, 3, 1, 2)


def _cache_file(root: Path, entries: list[tuple[str, Path]], cache: str | None) -> Path:
    digest = hashlib.sha256(str(root.resolve()).encode())
    for part, f in entries:
        st = f.stat()
        digest.update(f"{part}/{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    folder = Path(cache).expanduser() if cache else Path(tempfile.gettempdir()) / "fedweave-cache"
    return folder / f"imagefolder-{digest.hexdigest()[:24]}.npz"


def load_imagefolder(root: str | None, cache: str | None = None) -> DataSource:
    """Read (or take from the cache) the images under ``root``; see the module docstring."""
    if not root:
        raise DataError("data.dataset imagefolder needs data.root: a folder with one sub-folder of PNG/JPEG images "
                        "per class (or train/ and test/ folders laid out so).")
    base = Path(os.fspath(root)).expanduser()
    where = f"imagefolder {base}"
    if not base.is_dir():
        raise DataError(f"{where}: data.root is not a folder.")
    subdirs = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    parts = ["train", "test"] if subdirs == ["test", "train"] else [""]
    classes, files = _listing(base / parts[0])
    if not files:
        raise DataError(f"{where}: no .png/.jpg/.jpeg images in class sub-folders of {base / parts[0]}.")
    test_files: list[tuple[Path, int]] = []
    if len(parts) == 2:
        test_classes, test_listing = _listing(base / "test")
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise DataError(f"{where}: the test classes {unknown[:5]} do not occur in train/.")
        index = {c: i for i, c in enumerate(classes)}
        test_files = [(f, index[test_classes[c]]) for f, c in test_listing]
    entries = [(parts[0], f) for f, _ in files] + [("test", f) for f, _ in test_files]
    cache_file = _cache_file(base, entries, cache)
    if cache_file.is_file():
        with np.load(cache_file) as saved:
            x, y, xt, yt = saved["x"], saved["y"], saved["x_test"], saved["y_test"]
    else:
        both = _read([f for _, f in entries], where)
        x, xt = both[: len(files)], both[len(files):]
        y = np.asarray([c for _, c in files], dtype=np.int64)
        yt = np.asarray([c for _, c in test_files], dtype=np.int64)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(cache_file.name + f".{os.getpid()}.tmp.npz")
        np.savez(tmp, x=x, y=y, x_test=xt, y_test=yt)
        os.replace(tmp, cache_file)  # whole or absent, even with two runs reading at once

    def scale(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32) / 255.0)

    has_test = len(parts) == 2 and len(yt) > 0
    return DataSource(
        f"imagefolder/{base.name}", scale(x), torch.from_numpy(y), scale(xt) if has_test else None,
        torch.from_numpy(yt) if has_test else None, len(classes), tuple(int(s) for s in x.shape[1:]),
    )


register_source("imagefolder", lambda name, o: load_imagefolder(o.root, o.cache),
                description="one folder per class of PNG/JPEG images in data.root (train/ and test/ folders for an "
                "official test set); decoded once and cached in data.cache or the temporary folder")
