"""FSAR (general form): personal head + distillation of shallow-block features from the
received global model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import fedweave
from fedweave.config import load_config
from fedweave.errors import ConfigError
from fedweave.experiment import build_experiment
from fedweave.messages import Broadcast
from fedweave.methods.base import ClientJob
from fedweave.methods.fsar import FSARClient, FSARParams, feature_distance
from fedweave.params import FlatModel
from fedweave.tasks import make_task
from fedweave.train import TrainSettings


def test_feature_distances():
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    for kind in ("mse", "kl"):
        assert float(feature_distance(a, a, kind)) == pytest.approx(0.0, abs=1e-6)
        assert float(feature_distance(a, b, kind)) > 0
    assert torch.isclose(feature_distance(a, b, "mse"), ((a - b) ** 2).mean())


def test_roles_and_bad_layers_are_config_errors(tiny):
    exp = build_experiment(load_config(tiny({"method": {"name": "fsar"}})))
    assert [s.name for s in exp.spec.group("personal")] == ["3.weight", "3.bias"]
    with pytest.raises(ConfigError, match="distill_layers"):
        build_experiment(load_config(tiny({"method": {"name": "fsar", "distill_layers": ["conv9"]}})))


def _client_run(tiny, beta, kind="mse"):
    exp = build_experiment(load_config(tiny({"method": {"name": "fsar"}})))
    model = FlatModel(exp.model_factory(), exp.roles)
    worker = SimpleNamespace(model=model, task=make_task("classification"), data=exp.data,
                             setup=SimpleNamespace(model_factory=exp.model_factory, roles=exp.roles))
    params = FSARParams(beta=beta, distill=kind)
    job = ClientJob(0, 0, 0, Broadcast(0, model.params.clone(), model.buffers.clone()), None, TrainSettings(epochs=2, lr=0.1))
    out = FSARClient(params).train(job, worker, torch.Generator().manual_seed(0))
    return model, out


def test_distillation_pulls_the_shallow_features_towards_the_global_model(tiny):
    """β weighs a penalty whose minimum is zero drift of the distilled features from the
    global model's, so the first layer's drift must shrink as β grows: strictly, from β = 0
    (FedPer) through 1 to 5. No magnitude is claimed (the paper gives none); the β stay in
    plain SGD's stable range, lr · β · λ < 2, where λ is the penalty's curvature: the MSE over
    the 16 outputs of W x + b has Hessian 2 E[x xᵀ] / 16 (x with a 1 appended), λ = 1.44 on
    client 0's digits, so β < 2 / (0.1 · 1.44) ≈ 13.9 (β = 20 diverges)."""
    n1 = 64 * 16 + 16  # the first linear layer: the distilled block (digits 8x8 → 16)
    free_model, free = _client_run(tiny, 0.0)
    _, mid = _client_run(tiny, 1.0)
    pulled_model, pulled = _client_run(tiny, 5.0)
    drift = [float(r.update.delta[:n1].norm()) for r in (free, mid, pulled)]
    assert drift[0] > drift[1] > drift[2] > 0
    assert float(pulled.update.delta.norm()) > 0
    for model in (free_model, pulled_model):  # the capture hooks are removed after training
        assert not any(m._forward_hooks for m in model.module.modules())


def test_beta_zero_is_fedper_and_kl_runs(tiny, tmp_path):
    cfg = tiny({"eval": {"personalized": True}})
    fedper = fedweave.run(tiny({**cfg, "method": {"name": "fedper"}}), out=tmp_path / "fedper")
    fsar0 = fedweave.run(tiny({**cfg, "method": {"name": "fsar", "beta": 0.0}}), out=tmp_path / "fsar0")
    assert fsar0.summary["personalized_acc_mean"] == fedper.summary["personalized_acc_mean"]
    assert torch.equal(fsar0.params, fedper.params)
    kl = fedweave.run(tiny({**cfg, "method": {"name": "fsar", "distill": "kl", "beta": 1.0}}), out=tmp_path / "kl")
    assert kl.status == "completed" and not torch.equal(kl.params, fedper.params)


def test_the_default_distilled_block_of_a_module_list_is_its_first_element(tiny, tmp_path):
    """A ModuleList is never called, so a hook on it would never fire: the default layer is
    its first element (stgcn's blocks.0), and the general form runs on stgcn."""
    from fedweave.methods.fsar import first_block
    from fedweave.tasks.skeleton import build_stgcn

    assert first_block(build_stgcn((3, 16, 25), num_classes=8, width=4)) == "blocks.0"
    assert first_block(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))) == "1"
    res = fedweave.run(tiny({"data": {"dataset": "skeleton:2", "partition": {"kind": "natural", "num_clients": 2}},
                             "model": {"name": "stgcn", "width": 4}, "method": {"name": "fsar"},
                             "schedule": {"rounds": 1, "clients_per_round": 2}}), out=tmp_path / "run")
    assert res.status == "completed"
