"""The federated dataset: one tensor of examples and per-client index views into it.

Splits are carved deterministically from ``data.seed`` (never from the training
``seed``, so changing the training seed keeps the data fixed):

1. the test split (``data.test_fraction``, stratified) unless the source has an
   official test set;
2. the server-held split (``data.server_fraction``, class-balanced), for methods that
   need server data (FedLAW's proxy set, FLTrust's root set);
3. the partition of the rest over clients;
4. each client's held-out validation split (``data.client_val_fraction``).

Client data are index tensors into ``x``/``y``: nothing is copied per client.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.errors import ConfigError
from ..core.rng import derive_seed
from .partition import partition
from .sources import DataSource, load_source
from .splits import balanced_holdout, client_validation_split, stratified_holdout


@dataclass
class FederatedDataset:
    name: str
    x: torch.Tensor
    y: torch.Tensor
    client_train: list[torch.Tensor]  # int64 index tensors into x / y
    client_val: list[torch.Tensor]
    x_test: torch.Tensor
    y_test: torch.Tensor
    server_idx: torch.Tensor  # indices into x / y of the server-held split (may be empty)
    num_classes: int
    input_shape: tuple[int, ...]
    # class label of every example of x (partitions, label histograms); y itself when y holds
    # class labels, separate when y holds restoration targets
    labels: torch.Tensor | None = None
    # data.augment of the training minibatches (the vectorized executor checks it)
    augment: str = "none"

    def __post_init__(self):
        if self.labels is None:
            self.labels = self.y

    @property
    def num_clients(self) -> int:
        return len(self.client_train)

    def client_sizes(self) -> np.ndarray:
        return np.array([len(i) for i in self.client_train], dtype=np.int64)

    def server_data(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if len(self.server_idx) == 0:
            return None
        return self.x[self.server_idx], self.y[self.server_idx]


def _as_index(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.int64))


def load_dataset_source(data_cfg) -> DataSource:
    syn = data_cfg.synthetic
    return load_source(
        data_cfg.dataset,
        root=data_cfg.root,
        seed=data_cfg.seed,
        synthetic_alpha=syn.alpha,
        synthetic_beta=syn.beta,
        synthetic_num_clients=syn.num_clients,
        synthetic_dim=syn.dim,
        synthetic_classes=syn.num_classes,
        data_name=getattr(data_cfg, "name", None),
        split=getattr(data_cfg, "split", None),
        columns=None if getattr(data_cfg, "columns", None) is None else data_cfg.columns.model_dump(),
        tokenizer=getattr(data_cfg, "tokenizer", None),
        max_length=getattr(data_cfg, "max_length", 128),
        cache=getattr(data_cfg, "cache", None),
    )


def build_federated(data_cfg, source: DataSource | None = None) -> FederatedDataset:
    """Load the source named by ``data_cfg`` and carve splits and partition."""
    src = source if source is not None else load_dataset_source(data_cfg)
    labels = src.labels if src.labels is not None else src.y_train.numpy()
    pool = np.arange(len(labels), dtype=np.int64)
    seed = data_cfg.seed
    if src.x_test is None:
        pool, test_idx = stratified_holdout(labels, data_cfg.test_fraction, derive_seed(seed, "split-test"))
        x_test, y_test = src.x_train[_as_index(test_idx)], src.y_train[_as_index(test_idx)]
    else:
        x_test, y_test = src.x_test, src.y_test
    server_idx = np.zeros(0, dtype=np.int64)
    if data_cfg.server_fraction > 0:
        count = int(round(data_cfg.server_fraction * len(labels)))
        keep_rel, server_rel = balanced_holdout(labels[pool], count, derive_seed(seed, "split-server"))
        server_idx, pool = pool[server_rel], pool[keep_rel]
    p = data_cfg.partition
    client_ids = None if src.client_ids is None else np.asarray(src.client_ids)[pool]
    num_clients = p.num_clients
    if p.kind == "natural" and client_ids is not None:
        num_clients = len(np.unique(client_ids))
    if p.kind != "natural" and num_clients > len(pool):
        raise ConfigError(
            f"data.partition.num_clients={num_clients} exceeds the {len(pool)} training examples left after the splits."
        )
    parts_rel = partition(
        p.kind, labels[pool], num_clients, derive_seed(seed, "partition"),
        alpha=p.alpha, min_size=p.min_size, shards_per_client=p.shards_per_client,
        classes_per_client=p.classes_per_client, sigma=p.sigma, client_ids=client_ids,
    )
    parts = [pool[rel] for rel in parts_rel]
    train_parts, val_parts = client_validation_split(parts, data_cfg.client_val_fraction, derive_seed(seed, "split-val"))
    return FederatedDataset(
        name=src.name,
        x=src.x_train,
        y=src.y_train,
        client_train=[_as_index(t) for t in train_parts],
        client_val=[_as_index(v) for v in val_parts],
        x_test=x_test,
        y_test=y_test,
        server_idx=_as_index(server_idx),
        num_classes=src.num_classes,
        input_shape=tuple(src.input_shape),
        labels=None if src.labels is None else torch.as_tensor(np.asarray(src.labels, dtype=np.int64)),
        augment=getattr(data_cfg, "augment", "none"),
    )
