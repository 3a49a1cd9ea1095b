"""Data for federated simulations: sources, held-out splits, partitioners, statistics.

Typical flow: :func:`load_source` gives the training (and maybe official test)
tensors; :func:`stratified_holdout` / :func:`balanced_holdout` carve out test
and server splits; :func:`partition` deals the rest to clients; and
:func:`partition_summary` describes the result. A new data set is one module that
calls :func:`register_source`.
"""

from fedweave.data.partition import (
    PARTITIONERS,
    classes,
    dirichlet,
    iid,
    natural,
    partition,
    quantity,
    shards,
)
from fedweave.data.sources import (
    DATASETS,
    DataSource,
    SourceOptions,
    load_source,
    make_synthetic,
    read_idx,
    register_source,
)
from fedweave.data.splits import balanced_holdout, client_validation_split, stratified_holdout
from fedweave.data.stats import heterogeneity, label_histograms, partition_summary

# sources defined in their own modules register themselves when imported (in this order)
from fedweave.data import leaf as _leaf  # noqa: E402,F401
from fedweave.data import hf as _hf  # noqa: E402,F401
from fedweave.data import imagefolder as _imagefolder  # noqa: E402,F401

__all__ = [
    "DATASETS",
    "DataSource",
    "PARTITIONERS",
    "SourceOptions",
    "balanced_holdout",
    "classes",
    "client_validation_split",
    "dirichlet",
    "heterogeneity",
    "iid",
    "label_histograms",
    "load_source",
    "make_synthetic",
    "natural",
    "partition",
    "partition_summary",
    "quantity",
    "read_idx",
    "register_source",
    "shards",
    "stratified_holdout",
]
