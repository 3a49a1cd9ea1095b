"""The skeleton bundle (data ``skeleton``, model ``stgcn``) and FSAR on it (``fsar_gcn``):
shared topology averaged, specific topology kept local, multi-grain distillation through
hybrid streams (the official code's loss)."""

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
from fedweave.tasks.skeleton import (ACTIONS, COCO17, NTU25, GraphConv, build_stgcn, make_skeleton,
                                     normalized_adjacency, pose_ntu25)
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


def test_stgcn_forward_backward_reaches_both_topologies_and_the_masks():
    torch.manual_seed(0)
    model = build_stgcn((3, 16, 25), num_classes=8, width=4)
    out = model(torch.randn(2, 3, 16, 25))
    assert out.shape == (2, 8)
    out.square().sum().backward()
    assert not model.prior.requires_grad and model.prior.grad is None
    assert model.topology_shared.shape == model.topology_specific.shape == (25, 25)  # one each, whole network
    assert float(model.topology_shared.grad.abs().sum()) > 0
    assert torch.equal(model.topology_shared.grad, model.topology_specific.grad)  # (Â + S + P) ⊙ M: same gradient
    assert all(float(b.edge_importance.grad.abs().sum()) > 0 for b in model.blocks)
    assert all(torch.equal(b.edge_importance, torch.ones(25, 25)) for b in model.blocks)  # ones at the start


def test_graph_conv_by_hand():
    conv = GraphConv(2, 2)
    with torch.no_grad():
        conv.mix.weight.copy_(torch.eye(2).reshape(2, 2, 1, 1))
        conv.mix.bias.zero_()
    x = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 30.0]).reshape(1, 2, 1, 3)  # channels 0, 1; joints 0, 1, 2
    a = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 2.0]])  # y_w = Σ_v x_v A[v, w]
    assert torch.allclose(conv(x, a).flatten(), torch.tensor([1.0, 1.0, 6.0, 10.0, 10.0, 60.0]))


def test_the_forward_pass_cuts_at_block_boundaries_and_the_shared_topology_is_s_alone():
    torch.manual_seed(0)
    model = build_stgcn((3, 16, 25), num_classes=8, width=4)
    with torch.no_grad():
        model.topology_shared.normal_(0, 0.1)
        model.topology_specific.normal_(0, 0.1)
        for b in model.blocks:
            b.edge_importance.uniform_(0.5, 1.5)
    x = torch.randn(3, 3, 16, 25)
    full = model(x)
    for start in (1, 2, 3):
        assert torch.allclose(model.forward_from(model.block_outputs(x, start)[-1], start), full, atol=1e-5)
    # S ⊙ M alone is the full adjacency of the same model without prior and specific topology
    import copy

    bare = copy.deepcopy(model)
    with torch.no_grad():
        bare.prior.zero_()
        bare.topology_specific.zero_()
    for got, want in zip(model.block_outputs(x, 2, "shared"), bare.block_outputs(x, 2)):
        assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(model.block_outputs(x, 1, "shared")[0], model.block_outputs(x, 1)[0])


def test_mkd_loss_by_hand():
    main = torch.zeros(1, 2, requires_grad=True)  # softmax(main / T) = (1/2, 1/2) at any T
    stream = torch.tensor([[math.log(3.0), 0.0]])  # softmax = (3/4, 1/4)
    y = torch.tensor([0])
    ce = math.log(4 / 3)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    loss = mkd_loss(main, [stream], y, 0.5, 0.5, 1.0)
    assert float(loss.detach()) == pytest.approx(0.5 * ce + 0.5 * kl)
    loss.backward()  # the KL reaches the main logits (not detached, as in the official code)
    assert float(main.grad.abs().sum()) > 0
    # T = 2: softmax(stream / 2) = (√3, 1) / (√3 + 1); the CE is at T = 1; two streams are averaged
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    kl2 = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    uniform = torch.zeros(1, 2)
    assert float(mkd_loss(torch.zeros(1, 2), [stream, uniform], y, 1.0, 2.0, 2.0)) == pytest.approx(
        (ce + math.log(2)) / 2 + 2.0 * kl2 / 2)
    assert float(mkd_loss(main, [], y, 0.5, 0.5, 1.0)) == 0.0


def _worker(exp, model):
    return SimpleNamespace(model=model, task=make_task("classification"), data=exp.data,
                           setup=SimpleNamespace(model_factory=exp.model_factory, roles=exp.roles))


def test_client_step_follows_the_official_objective(tiny):
    """One full-batch SGD step of client 0 equals −lr · ∇ of the loss rebuilt here by
    hand: the teacher's first ℓ blocks on S ⊙ M_l, the client's blocks ℓ.. and head on
    (Â + S + P) ⊙ M_l, then CE + 0.5 · mean CE + 0.5 · mean KL (μ's term is zero at the
    received model)."""
    cfg = tiny({**SKELETON, "client": {"epochs": 1, "batch_size": 1000, "lr": 0.1}})
    exp = build_experiment(load_config(cfg))
    model = FlatModel(exp.model_factory(), exp.roles)
    with torch.no_grad():  # a received model whose shared topology matters, and a client with its own P
        model.module.topology_shared.normal_(0, 0.2, generator=torch.Generator().manual_seed(1))
        model.module.topology_specific.normal_(0, 0.2, generator=torch.Generator().manual_seed(2))
    start_params, start_personal = model.params.clone(), model.personal.clone()
    job = ClientJob(0, 0, 0, Broadcast(0, start_params.clone(), model.buffers.clone()), None,
                    TrainSettings(epochs=1, lr=0.1, batch_size=1000))
    out = FSARGCNClient(FSARGCNParams()).train(job, _worker(exp, model), torch.Generator().manual_seed(0))

    student = FlatModel(exp.model_factory(), exp.roles)
    student.params.copy_(start_params)
    student.personal.copy_(start_personal)
    net = student.module
    teacher = [(b, net.topology_shared.detach().clone()) for b in build_teacher_blocks(net)]
    idx = exp.data.client_train[0]
    x, y = exp.data.x[idx], exp.data.y[idx]
    own = net.prior + net.topology_shared + net.topology_specific

    def head_from(h, level):
        for block in net.blocks[level:]:
            h = block(h, own)
        return net.fc(h.mean(dim=(2, 3)))

    main = head_from(x, 0)
    streams, h = [], x
    for level in (1, 2):  # mkd_depth 2
        with torch.no_grad():
            block, s = teacher[level - 1]
            h = block(h, s)
        streams.append(head_from(h, level))
    ce = torch.nn.functional.cross_entropy
    p_main = torch.log_softmax(main, dim=1)
    kl = [(torch.softmax(z, 1) * (torch.log_softmax(z, 1) - p_main)).sum(1).mean() for z in streams]
    loss = ce(main, y) + 0.5 * (ce(streams[0], y) + ce(streams[1], y)) / 2 + 0.5 * (kl[0] + kl[1]) / 2
    loss.backward()
    grads = dict(net.named_parameters())
    for seg in exp.spec.group("trainable"):
        assert torch.allclose(out.update.delta[seg.slice], -0.1 * grads[seg.name].grad.flatten(), atol=2e-6), seg.name
    specific = exp.spec.group("personal")[0]
    assert specific.name == "topology_specific"
    assert torch.allclose(model.personal - start_personal, -0.1 * grads["topology_specific"].grad.flatten(), atol=2e-6)


def build_teacher_blocks(net):
    """The received model's blocks, frozen (a copy, so the student's step cannot move them)."""
    import copy

    blocks = copy.deepcopy(net.blocks)
    for p in blocks.parameters():
        p.requires_grad_(False)
    return list(blocks)


def test_the_proximal_term_is_the_official_codes():
    assert FSARGCNClient(FSARGCNParams()).proximal_mu == 0.01
    assert FSARGCNClient(FSARGCNParams(mu=0.0)).proximal_mu == 0.0


def test_shared_topology_averaged_and_specific_kept_local(tiny, tmp_path):
    cfg = tiny({**SKELETON, "client": {"epochs": 1, "batch_size": 1000, "lr": 0.5}})  # one full-batch step
    exp = build_experiment(load_config(cfg))
    assert [s.name for s in exp.spec.group("personal")] == ["topology_specific"]
    trainable = [s.name for s in exp.spec.group("trainable")]
    assert "topology_shared" in trainable and "blocks.2.edge_importance" in trainable and "prior" not in trainable
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
    shared = next(s for s in exp.spec.group("trainable") if s.name == "topology_shared").slice
    assert float((result.params[shared] - init.params[shared]).abs().max()) > 0  # the shared topology moved


def test_topology_split_refused_on_a_model_without_adjacency(tiny):
    with pytest.raises(ConfigError, match="no graph adjacency parameters"):
        build_experiment(load_config(tiny({"method": {"name": "fsar_gcn"}})))
    with pytest.raises(ConfigError, match="mkd_depth is 4, but the model has only 3 blocks"):
        build_experiment(load_config(tiny({**SKELETON, "method": {"name": "fsar_gcn", "mkd_depth": 4}})))
    with pytest.raises(ConfigError, match="own proximal term"):
        build_experiment(load_config(tiny({**SKELETON, "client": {"objective": "prox"}})))


def test_tiny_end_to_end_against_fedavg(tiny, tmp_path):
    base = tiny({**SKELETON, "data": {"dataset": "skeleton:4", "partition": {"kind": "natural", "num_clients": 4}},
                 "schedule": {"rounds": 2, "clients_per_round": 4}, "eval": {"personalized": True},
                 "client": {"epochs": 1, "batch_size": 32, "lr": 0.1}})
    fsar = fedweave.run(base, out=tmp_path / "fsar")
    avg = fedweave.run({**base, "method": {"name": "fedavg"}}, out=tmp_path / "avg")
    assert fsar.status == avg.status == "completed"
    assert fsar.params.numel() < avg.params.numel()  # the specific topology stays on the clients
    assert avg.params.numel() - fsar.params.numel() == 25 * 25  # one specific topology per client
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
