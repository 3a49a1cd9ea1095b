"""What a client learns of the run's config when it joins: what it needs to train, no more.

The ``Join`` reply carries a config from which the client builds the same worker the
simulator uses (:meth:`fedweave.deploy.client.DeployClient._build_worker`, through
``build_experiment`` with the client's own data). The allow-list below is what that code
reads: the model, task, method and client-training sections, the seed, the schedule
(validated against the client count), the attack and privacy sections (they wrap the
client's algorithm), the data fields methods check at set-up (FedLAW/FLTrust need
``server_fraction``, FedCE the partition and ``client_val_fraction``) and two evaluation
and executor settings. Everything else stays on the server: ``output`` (directories,
MLflow URIs that may hold credentials), file paths and Hub names of the server's data
(``data.root``, ``name``, ``split``, ``columns``), the device simulation (``system``, which may
name a trace file), the eavesdropper and the executor's cluster address. Withheld sections
go out as their defaults, so the client's config still validates.
"""

from __future__ import annotations

from typing import Any

from ..config import Config, validate

SECTIONS = ("name", "seed", "model", "task", "method", "client", "schedule", "attack", "privacy")
FIELDS = {
    "data": ("dataset", "seed", "test_fraction", "server_fraction", "client_val_fraction", "partition", "synthetic"),
    "eval": ("batch_size",),
    "executor": ("threads",),
}


def client_view(cfg: Config) -> dict[str, Any]:
    """The part of ``cfg`` a client needs, as a plain dict."""
    full = cfg.to_dict()
    view = {key: full[key] for key in SECTIONS}
    for section, keys in FIELDS.items():
        view[section] = {k: full[section][k] for k in keys}
    return view


def client_config_yaml(cfg: Config) -> str:
    """The YAML the ``Join`` reply carries (validated, so the client can always load it)."""
    return validate(client_view(cfg)).to_yaml()
