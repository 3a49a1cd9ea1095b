"""Aggregation math on stacked client updates, and server optimizers.

Every function takes the client updates stacked as a ``[K, P]`` float tensor (one row per
client, parameters flattened) and is vectorised over the P coordinates:

* :mod:`~fedweave.aggregate.mean` -- ``weighted_mean`` (FedAvg, McMahan et al. 2017);
* :mod:`~fedweave.aggregate.coordinate` -- coordinate-wise ``median`` and
  ``trimmed_mean`` (Yin et al. 2018);
* :mod:`~fedweave.aggregate.krum` -- ``krum`` / Multi-Krum (Blanchard et al. 2017) and
  ``bulyan`` (El Mhamdi et al. 2018);
* :mod:`~fedweave.aggregate.geometry` -- ``pairwise_sq_distances``, ``clip_by_norm`` and
  ``cosine_similarity_rows``;
* :mod:`~fedweave.aggregate.server_opt` -- server optimizers (FedAvg, FedAvgM, FedAdam,
  FedYogi, FedAdagrad) that turn the aggregated delta into a new global model;
* :mod:`~fedweave.aggregate.staleness` -- staleness functions ``s(τ)`` for asynchronous
  aggregation (constant, polynomial, hinge; Xie et al. 2019) and ``staleness_weight``.

Invalid inputs (no clients, mismatched shapes, too few clients for the assumed number of
attackers) raise ``ValueError``; invalid optimizer settings raise ``ConfigError``.
"""

from fedweave.aggregate.coordinate import median, trimmed_mean
from fedweave.aggregate.geometry import clip_by_norm, cosine_similarity_rows, pairwise_sq_distances
from fedweave.aggregate.krum import bulyan, bulyan_select, krum, krum_scores, krum_select
from fedweave.aggregate.mean import weighted_mean
from fedweave.aggregate.server_opt import (
    DEFAULT_SERVER_LR,
    SERVER_OPTIMIZERS,
    Replace,
    ServerAdagrad,
    ServerAdam,
    ServerOptimizer,
    ServerSGD,
    ServerYogi,
    make_server_optimizer,
)
from fedweave.aggregate.staleness import STALENESS_FUNCTIONS, constant, hinge, polynomial, staleness_weight

__all__ = [
    "weighted_mean",
    "median",
    "trimmed_mean",
    "pairwise_sq_distances",
    "clip_by_norm",
    "cosine_similarity_rows",
    "krum_scores",
    "krum_select",
    "krum",
    "bulyan_select",
    "bulyan",
    "ServerOptimizer",
    "Replace",
    "ServerSGD",
    "ServerAdam",
    "ServerYogi",
    "ServerAdagrad",
    "SERVER_OPTIMIZERS",
    "DEFAULT_SERVER_LR",
    "make_server_optimizer",
    "STALENESS_FUNCTIONS",
    "constant",
    "polynomial",
    "hinge",
    "staleness_weight",
]
