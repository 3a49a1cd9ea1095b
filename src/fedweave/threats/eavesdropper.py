"""An eavesdropper on the uplink, and how much of the model it learns.

Model protection against eavesdroppers: an eavesdropper intercepts each uplink message
independently with probability p (``eavesdropper.probability``; the coin for client k's
upload in round r comes from ``numpy_rng(seed, "eavesdrop", r, k, base_version)``) and
keeps its own model from what it saw. It never sees the downlink nor the server's model.

* ``sees: models`` (default) — the uploads are full models w_k, as in McMahan et al.'s
  FedAvg. At the end of each round in which it intercepted at least one message, the
  eavesdropper's model becomes the example-weighted mean of the intercepted models; in
  other rounds it keeps its model. (fedweave's uplink carries Δ_k = w_k − w_g; the observer
  rebuilds w_k = w_g(base version) + Δ_k, which is exactly what a full-model upload would
  have carried. This is a simulation device: it is the only use of the server's model.)
  With p = 1 this reproduces the server's FedAvg model round by round.
* ``sees: deltas`` — the uploads are updates only: the eavesdropper adds the
  example-weighted mean of the intercepted deltas to its own model, which starts from its
  own random initialisation (it does not know the server's).

Its figures: ``eavesdropper_accuracy`` (its model on the test set; the server's is
``accuracy`` in the same record) and ``eavesdropper_intercepted`` (messages so far). The eavesdropper sees uplinks as they
arrive, before the server's cohort hooks (attacks' collusion) and before non-finite
updates are dropped; under DP it sees the clipped, un-noised updates (central DP adds noise
on the server only, so it does not protect the uplink).
"""

from __future__ import annotations

import dataclasses

import torch

from ..core.errors import ConfigError
from ..core.observer import Observer
from ..core.params import FlatModel
from ..core.rng import derive_seed, numpy_rng
from ..methods import get_method

_KEEP_VERSIONS = 64


class Eavesdropper(Observer):
    def __init__(self, probability: float, sees: str, seed: int, model_factory, roles: dict, task,
                 x_test: torch.Tensor, y_test: torch.Tensor, initial_params: torch.Tensor,
                 initial_buffers: torch.Tensor, batch_size: int = 2048):
        self.p = probability
        self.sees = sees
        self.seed = seed
        self.task = task
        self.x_test, self.y_test = x_test, y_test
        self.batch_size = batch_size
        # its own model: a separately seeded initialisation of the same architecture
        own = dataclasses.replace(model_factory, seed=derive_seed(seed, "eavesdropper")) if dataclasses.is_dataclass(model_factory) else model_factory
        self.model = FlatModel(own(), roles)
        self.params = self.model.params.clone()
        self.buffers = self.model.buffers.clone()
        self.globals = {0: (initial_params.clone(), initial_buffers.clone())}  # version -> server model (models mode)
        self.pending: list[tuple[torch.Tensor, torch.Tensor, float]] = []
        self.intercepted = 0
        self.last: float | None = None

    def intercepts(self, update, round_: int) -> bool:
        if self.p >= 1.0:
            return True
        rng = numpy_rng(self.seed, "eavesdrop", round_, update.client_id, update.base_version)
        return bool(rng.random() < self.p)

    def on_upload(self, update, round_: int) -> None:
        if update.delta is None or not self.intercepts(update, round_):
            return
        if self.sees == "models":
            base = self.globals.get(update.base_version)
            if base is None:  # older than the versions kept: a full model cannot be rebuilt
                return
            model = base[0] + update.delta
            buffers = update.buffers if update.buffers is not None else base[1]
        else:
            model, buffers = update.delta.clone(), update.buffers
        self.pending.append((model, buffers if buffers is not None else self.buffers, float(update.num_examples)))
        self.intercepted += 1

    def on_round_end(self, state, round_: int) -> None:
        if self.pending:
            w = torch.tensor([n for _, _, n in self.pending], dtype=torch.float64)
            w = (w / w.sum()).to(self.params.dtype)
            mean = w @ torch.stack([m for m, _, _ in self.pending])
            if self.sees == "models":
                self.params = mean
            else:
                self.params = self.params + mean
            if self.buffers.numel():
                self.buffers = w @ torch.stack([b for _, b, _ in self.pending])
            self.pending = []
        if self.sees == "models":
            self.globals[state.version] = (state.params.clone(), state.buffers.clone())
            for v in sorted(self.globals)[:-_KEEP_VERSIONS]:
                del self.globals[v]

    @torch.no_grad()
    def evaluate(self, module, state) -> dict:
        self.model.params.copy_(self.params)
        if self.buffers.numel():
            self.model.buffers.copy_(self.buffers)
        scores = self.task.evaluate(self.model.module, self.x_test, self.y_test, self.batch_size)
        self.last = scores[self.task.metric_name]
        return {f"eavesdropper_{self.task.metric_name}": self.last, "eavesdropper_intercepted": self.intercepted}

    def summary(self) -> dict:
        return {
            f"final_eavesdropper_{self.task.metric_name}": self.last,
            "eavesdropper_intercepted": self.intercepted,
            "eavesdropper_probability": self.p,
        }

    def state_dict(self) -> dict:
        return {"params": self.params, "buffers": self.buffers, "globals": self.globals,
                "intercepted": self.intercepted, "last": self.last}

    def load_state_dict(self, state: dict) -> None:
        self.params, self.buffers = state["params"], state["buffers"]
        self.globals = dict(state["globals"])
        self.intercepted, self.last = int(state["intercepted"]), state["last"]
        self.pending = []


def configure_eavesdropper(exp) -> None:
    """Extension: ``eavesdropper.probability > 0`` adds the eavesdropper observer."""
    e = exp.config.eavesdropper
    if e.probability <= 0:
        return
    refusal = get_method(exp.config.method.name).threats.eavesdropper_refusal()
    if refusal is not None:
        raise ConfigError(refusal)
    exp.observers.append(Eavesdropper(
        e.probability, e.sees, exp.config.seed, exp.model_factory, exp.roles, exp.task,
        exp.data.x_test, exp.data.y_test, exp.initial_params, exp.initial_buffers, exp.config.eval.batch_size,
    ))
