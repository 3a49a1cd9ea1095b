"""The skeleton bundle (data ``skeleton``, model ``stgcn``) and FSAR on it (``fsar_gcn``):
shared topology averaged, specific topology kept local, multi-grain distillation."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import fedweave
from fedweave.config import load_config
from fedweave.errors import ConfigError
from fedweave.experiment import build_experiment
from fedweave.messages import Broadcast
from fedweave.methods.base import ClientJob
from fedweave.methods.fsar_gcn import FSARGCNClient, FSARGCNParams, mkd_loss
from fedweave.params import FlatModel
from fedweave.tasks import make_task
from fedweave.tasks.skeleton import (ACTIONS, COCO17, NTU25, build_stgcn, make_skeleton, normalized_adjacency,
                                     pose_ntu25)
from fedweave.train import TrainSettings

SKELETON = {
    "data": {"dataset": "skeleton:2", "partition": {"kind": "natural", "num_clients": 2}, "client_val_fraction": 0.0},
    "model": {"name": "stgcn", "width": 4},
    "schedule": {"rounds": 1, "clients_per_round": 2},
    "method": {"name": "fsar_gcn"},
}


def test_source_is_deterministic_and_layouts_differ_by_client():
    x, y, c = make_skeleton(4, seed=3, per_action=2)
    x2, y2, c2 = make_skeleton(4, seed=3, per_action=2)
    assert torch.equal(x, x2) and torch.equal(y, y2) and (c == c2).all()
    assert not torch.equal(x, make_skeleton(4, seed=4, per_action=2)[0])
    assert x.shape == (4 * len(ACTIONS) * 2, 3, 16, 25)
    for client in range(4):  # every client holds every action, twice
        assert torch.bincount(y[torch.as_tensor(c == client)], minlength=len(ACTIONS)).tolist() == [2] * len(ACTIONS)
    even, odd = x[torch.as_tensor(c % 2 == 0)], x[torch.as_tensor(c % 2 == 1)]
    assert float(odd[..., len(COCO17):].abs().max()) == 0.0  # 17-joint clients: slots 17-24 empty
    assert float(even[..., len(COCO17):].abs().amax(dim=(0, 1, 2)).min()) > 0  # 25-joint clients use every slot


def test_homogeneous_control_changes_only_the_layouts():
    mixed, y, _ = make_skeleton(2, seed=3, per_action=1)
    same, y2, _ = make_skeleton(2, seed=3, per_action=1, layouts="ntu25")
    assert torch.equal(y, y2)
    assert torch.equal(mixed[:8], same[:8])  # client 0 records NTU25 in both
    assert not torch.equal(mixed[8:], same[8:]) and float(same[8:, ..., 17:].abs().max()) > 0


def test_kinematics_keep_bone_lengths_and_move_per_action():
    pose = pose_ntu25(ACTIONS.index("wave"), 16, scale=1.0, amp=1.0, freq=1.0, phase=0.0)
    upper_arm = (pose[:, NTU25.index("r_elbow")] - pose[:, NTU25.index("r_shoulder")])
    shin = (pose[:, NTU25.index("l_ankle")] - pose[:, NTU25.index("l_knee")])
    assert upper_arm.shape == (16, 3)
    assert torch.allclose(torch.as_tensor(upper_arm).norm(dim=1), torch.full((16,), 0.28, dtype=torch.float64))
    assert torch.allclose(torch.as_tensor(shin).norm(dim=1), torch.full((16,), 0.40, dtype=torch.float64))
    # waving raises the right wrist above the head; walking moves the root forward
    assert (pose[:, NTU25.index("r_wrist"), 1] > pose[:, NTU25.index("head"), 1]).all()
    walk = pose_ntu25(ACTIONS.index("walk"), 16, 1.0, 1.0, 1.0, 0.0)
    assert walk[-1, 0, 2] - walk[0, 0, 2] == pytest.approx(0.06 * 15)


def test_normalized_adjacency_by_hand():
    a = normalized_adjacency([(0, 1), (1, 2)], joints=3)  # degrees with self-loops: 2, 3, 2
    expected = torch.tensor([[1 / 2, 1 / math.sqrt(6), 0], [1 / math.sqrt(6), 1 / 3, 1 / math.sqrt(6)],
                             [0, 1 / math.sqrt(6), 1 / 2]])
    assert torch.allclose(a, expected)


def test_stgcn_forward_backward_reaches_both_topologies():
    torch.manual_seed(0)
    model = build_stgcn((3, 16, 25), num_classes=8, width=4)
    out = model(torch.randn(2, 3, 16, 25))
    assert out.shape == (2, 8)
    out.square().sum().backward()
    gcn = model.blocks[0].gcn
    assert not gcn.prior.requires_grad and gcn.prior.grad is None
    assert float(gcn.topology_shared.grad.abs().sum()) > 0
    assert torch.equal(gcn.topology_shared.grad, gcn.topology_specific.grad)  # A = Â + S + P: same gradient


def test_mkd_loss_by_hand():
    s = torch.arange(24.0).reshape(1, 2, 3, 4)
    t = torch.zeros(1, 2, 3, 4)
    motion = ((s[:, :, 1:] - s[:, :, :-1]) ** 2).mean()  # every temporal difference is 4
    assert float(motion) == 16.0
    assert float(mkd_loss([s], [t], ["motion"])) == pytest.approx(16.0)
    assert float(mkd_loss([s, s], [t, t], ["joint"])) == pytest.approx(float((s**2).mean()))  # mean over blocks
    assert float(mkd_loss([s], [t], ["body"])) == pytest.approx(float((s.mean(dim=3) ** 2).mean()))


def _worker(exp, model):
    return SimpleNamespace(model=model, task=make_task("classification"), data=exp.data,
                           setup=SimpleNamespace(model_factory=exp.model_factory, roles=exp.roles))


def test_shared_topology_averaged_and_specific_kept_local(tiny, tmp_path):
    cfg = tiny({**SKELETON, "client": {"epochs": 1, "batch_size": 1000, "lr": 0.5}})  # one full-batch step
    exp = build_experiment(load_config(cfg))
    assert [s.name for s in exp.spec.group("personal")] == [f"blocks.{b}.gcn.topology_specific" for b in range(3)]
    assert "blocks.0.gcn.topology_shared" in [s.name for s in exp.spec.group("trainable")]
    init = FlatModel(exp.model_factory(), exp.roles)
    deltas, personal, sizes = [], [], []
    for client in (0, 1):  # by hand: each client's step from the same initial model
        model = FlatModel(exp.model_factory(), exp.roles)
        job = ClientJob(client, 0, 0, Broadcast(0, init.params.clone(), init.buffers.clone()), None,
                        TrainSettings(epochs=1, lr=0.5, batch_size=1000))
        out = FSARGCNClient(FSARGCNParams()).train(job, _worker(exp, model), torch.Generator().manual_seed(0))
        assert out.update.delta.numel() == exp.spec.num_params  # the specific topology is not uploaded
        deltas.append(out.update.delta)
        personal.append(model.personal.clone())
        sizes.append(len(exp.data.client_train[client]))
    assert float((personal[0] - personal[1]).abs().max()) > 0 and float(personal[0].abs().max()) > 0
    expected = init.params + (sizes[0] * deltas[0] + sizes[1] * deltas[1]) / (sizes[0] + sizes[1])
    result = fedweave.run(cfg, out=tmp_path / "run")
    assert torch.allclose(result.params, expected, atol=1e-6)
    shared = next(s for s in exp.spec.group("trainable") if s.name == "blocks.1.gcn.topology_shared").slice
    assert float((result.params[shared] - init.params[shared]).abs().max()) > 0  # the shared topology moved


def test_distillation_pulls_shallow_blocks_towards_the_server_model(tiny):
    cfg = tiny({**SKELETON, "client": {"epochs": 3, "batch_size": 16, "lr": 0.001}})
    exp = build_experiment(load_config(cfg))
    shallow = [s.slice for s in exp.spec.group("trainable") if s.name.startswith("blocks.0.")]

    def shallow_drift(beta):
        model = FlatModel(exp.model_factory(), exp.roles)
        job = ClientJob(0, 0, 0, Broadcast(0, model.params.clone(), model.buffers.clone()), None,
                        TrainSettings(epochs=3, lr=0.001, batch_size=16))
        out = FSARGCNClient(FSARGCNParams(beta=beta)).train(job, _worker(exp, model), torch.Generator().manual_seed(0))
        assert not any(m._forward_hooks for m in model.module.modules())
        return float(torch.cat([out.update.delta[s] for s in shallow]).norm())

    assert shallow_drift(5.0) < 0.6 * shallow_drift(0.0)  # 0.37 measured (a step-size-bound pull: large β·lr overshoots)


def test_topology_split_refused_on_a_model_without_adjacency(tiny):
    with pytest.raises(ConfigError, match="no graph adjacency parameters"):
        build_experiment(load_config(tiny({"method": {"name": "fsar_gcn"}})))
    with pytest.raises(ConfigError, match="distill_layers"):
        build_experiment(load_config(tiny({**SKELETON, "method": {"name": "fsar_gcn", "distill_layers": ["nope"]}})))


def test_tiny_end_to_end_against_fedavg(tiny, tmp_path):
    base = tiny({**SKELETON, "data": {"dataset": "skeleton:4", "partition": {"kind": "natural", "num_clients": 4}},
                 "schedule": {"rounds": 2, "clients_per_round": 4}, "eval": {"personalized": True},
                 "client": {"epochs": 1, "batch_size": 32, "lr": 0.1}})
    fsar = fedweave.run(base, out=tmp_path / "fsar")
    avg = fedweave.run({**base, "method": {"name": "fedavg"}}, out=tmp_path / "avg")
    assert fsar.status == avg.status == "completed"
    assert fsar.params.numel() < avg.params.numel()  # three 25x25 topologies stay on the clients
    assert avg.params.numel() - fsar.params.numel() == 3 * 25 * 25
    assert 0.0 <= fsar.summary["personalized_acc_mean"] <= 1.0


def test_cli_refuses_the_topology_split_on_an_mlp_with_exit_2(tmp_path):
    from typer.testing import CliRunner

    from fedweave.cli import app

    out = tmp_path / "x"
    result = CliRunner().invoke(app, ["run", "--quiet", "--out", str(out), "--set", "method.name=fsar_gcn",
                                      "--set", "model.hidden=[8]", "--set", "schedule.rounds=1"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "no graph adjacency parameters" in text and "stgcn" in text and "Traceback" not in result.output
    assert not out.exists()
