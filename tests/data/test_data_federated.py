"""The federated dataset's four splits — test, server-held, client training, client
validation — are pairwise disjoint and together cover the data, for every partitioner and
with the server and validation splits on.

Each example carries its own index as its first feature, so every split can be traced back
to the examples it holds, whatever the code under test copied or indexed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedweave.config import load_config
from fedweave.data import PARTITIONERS, DataSource
from fedweave.data.federated import build_federated

N, C = 600, 6


def _source(official_test: bool = False) -> DataSource:
    rng = np.random.default_rng(5)
    y = torch.as_tensor(rng.integers(0, C, N), dtype=torch.int64)
    x = torch.zeros(N, 3)
    x[:, 0] = torch.arange(N, dtype=torch.float32)  # the example's identity (exact in float32)
    x[:, 1] = y.float()
    client_ids = np.repeat(np.arange(12), N // 12)  # the natural split: 12 clients of 50
    x_test = y_test = None
    if official_test:
        x_test, y_test = torch.full((40, 3), -1.0), torch.zeros(40, dtype=torch.int64)
    return DataSource("traced", x, y, x_test, y_test, C, (3,), client_ids=client_ids)


PARTITIONS = {
    "iid": {"num_clients": 10},
    "dirichlet": {"num_clients": 10, "alpha": 0.3, "min_size": 5},
    "shards": {"num_clients": 10, "shards_per_client": 2},
    "classes": {"num_clients": 10, "classes_per_client": 2},
    "quantity": {"num_clients": 10, "sigma": 1.0, "min_size": 5},
    "natural": {"num_clients": 12},
}


def _ids(x: torch.Tensor) -> np.ndarray:
    return x[:, 0].round().long().numpy()


def _build(kind, official_test=False, test=0.2, server=0.1, val=0.25):
    cfg = load_config({"data": {"dataset": "digits", "seed": 3, "test_fraction": test, "server_fraction": server,
                                "client_val_fraction": val, "partition": {"kind": kind, **PARTITIONS[kind]}}})
    src = _source(official_test)
    return build_federated(cfg.data, source=src), src


def _check_partition_of_the_data(fd, src, official_test):
    test = np.zeros(0, dtype=np.int64) if official_test else _ids(fd.x_test)
    server = fd.server_idx.numpy()
    train = [t.numpy() for t in fd.client_train]
    val = [v.numpy() for v in fd.client_val]
    # what the tensors of each split hold is what their indices say
    if not official_test:
        assert torch.equal(fd.y_test, src.y_train[torch.as_tensor(test)])
    assert np.array_equal(_ids(fd.x[fd.server_idx]), server)
    splits = {"test": test, "server": server, "train": np.concatenate(train), "val": np.concatenate(val)}
    for name, idx in splits.items():
        assert len(np.unique(idx)) == len(idx), f"{name} holds an example twice"
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not np.intersect1d(splits[a], splits[b]).size, f"{a} and {b} share examples"
    assert np.array_equal(np.sort(np.concatenate(list(splits.values()))), np.arange(N))
    # each client's validation examples come from its own share: no example of another client
    for k, (t, v) in enumerate(zip(train, val)):
        assert not np.intersect1d(t, v).size
    return splits


@pytest.mark.parametrize("kind", sorted(PARTITIONS))
def test_four_splits_are_disjoint_and_cover_the_data(kind):
    fd, src = _build(kind)
    splits = _check_partition_of_the_data(fd, src, official_test=False)
    # sizes from the fractions: test = round(0.2 N); server = round(0.1 N) of the whole set
    assert len(splits["test"]) == round(0.2 * N)
    assert len(splits["server"]) == round(0.1 * N)
    # every client with n_k >= 2 examples holds out round(0.25 n_k) of them (at least one)
    for t, v in zip(fd.client_train, fd.client_val):
        n_k = len(t) + len(v)
        assert len(v) == max(1, int(np.floor(0.25 * n_k + 0.5))) and len(t) >= 1
    assert set(PARTITIONS) == set(PARTITIONERS)


@pytest.mark.parametrize("kind", ["dirichlet", "natural"])
def test_with_an_official_test_set_the_other_three_cover_the_training_data(kind):
    fd, src = _build(kind, official_test=True)
    assert torch.equal(fd.x_test, src.x_test)  # the source's own test set, untouched
    _check_partition_of_the_data(fd, src, official_test=True)


def test_without_server_and_validation_splits_clients_hold_all_but_the_test_split():
    fd, src = _build("dirichlet", server=0.0, val=0.0)
    splits = _check_partition_of_the_data(fd, src, official_test=False)
    assert len(splits["server"]) == len(splits["val"]) == 0
    assert len(splits["train"]) == N - round(0.2 * N)
