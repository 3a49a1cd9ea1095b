"""pLoRA: B-only server state, shared A basis, the three sharing modes, bad inputs."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("peft")

import fedweave  # noqa: E402
from fedweave.errors import ConfigError  # noqa: E402
from fedweave.messages import SCALAR_BYTES  # noqa: E402
from fedweave.params import FlatModel  # noqa: E402

LM = {
    "data": {"dataset": "pydocs:16", "partition": {"kind": "natural"}},
    "task": {"kind": "language_model"},
    "model": {"name": "transformer", "kwargs": {"d_model": 16, "n_layers": 1, "n_heads": 2}},
    "client": {"local_steps": 2, "batch_size": 8, "lr": 0.01, "optimizer": "adam"},
    "schedule": {"rounds": 2, "clients_per_round": 3},
    "eval": {"personalized": True, "batch_size": 4096},
    "method": {"name": "plora", "rank": 2},
}


def _cfg(**method):
    cfg = copy.deepcopy(LM)
    cfg["method"].update(method)
    return fedweave.load_config(cfg)


def _names(spec, group):
    return [s.name for s in spec.group(group)]


def test_plora_server_state_holds_only_B(tmp_path):
    exp = fedweave.build_experiment(_cfg())
    trainable, personal = _names(exp.spec, "trainable"), _names(exp.spec, "personal")
    assert trainable and all(".lora_B." in n for n in trainable)
    assert personal and all(".lora_A." in n for n in personal)
    # q, k, v, o, fc1, fc2 adapted; the output layer and every base weight frozen, not sent
    assert {n.split(".lora_")[0] for n in trainable} == {f"blocks.0.{m}" for m in ("attn.q", "attn.k", "attn.v", "attn.o", "fc1", "fc2")}
    frozen = _names(exp.spec, "frozen")
    assert "lm_head.weight" in frozen and "blocks.0.attn.q.base_layer.weight" in frozen and "tok.weight" in frozen
    num_b = sum(s.numel for s in exp.spec.group("trainable"))
    state = exp.strategy.init(exp.initial_params, exp.initial_buffers, None)
    assert state.params.numel() == num_b and torch.count_nonzero(state.params) == 0  # B starts at 0
    result = fedweave.run(_cfg(), out=tmp_path / "plora")
    assert result.status == "completed" and result.params.numel() == num_b
    assert torch.count_nonzero(result.params) > 0
    # each upload is the B delta plus scalars; each download the global B
    per_update = 4 * num_b + SCALAR_BYTES * 5
    assert result.summary["bytes_up"] == result.summary["client_updates"] * per_update


def test_plora_personalized_perplexity_is_recomputed_from_each_clients_adapters(tmp_path):
    """Each client's model (global B + its own A, through the method's personalize) scored on
    its validation split: a client's perplexity is exp(mean token cross-entropy over its
    validation tokens) — the sequences have equal length, so this is also exp of the mean
    per-sequence loss — and personalized_acc_mean is their mean over clients."""
    import torch.nn.functional as F

    from helpers_eval import each_clients_own_model, run_keeping_the_final_checkpoint

    cfg = _cfg()
    last, server, states = run_keeping_the_final_checkpoint(cfg.model_dump(), tmp_path / "plora")
    exp = fedweave.build_experiment(_cfg())
    perplexities = []
    for _, val, module in each_clients_own_model(exp, last, server, states):
        module.eval()
        with torch.no_grad():
            logits = module(exp.data.x[val]).double()
        target = exp.data.y[val]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
        perplexities.append(float(torch.exp(nll)))
    assert states and len(perplexities) > 1
    assert last["personalized_acc_mean"] == pytest.approx(sum(perplexities) / len(perplexities), rel=1e-6)


def test_A_is_the_same_seeded_basis_for_every_client():
    exp = fedweave.build_experiment(_cfg())
    a1, a2 = FlatModel(exp.model_factory(), exp.roles), FlatModel(exp.model_factory(), exp.roles)
    assert torch.equal(a1.personal, a2.personal) and a1.personal.abs().sum() > 0


def test_per_client_A_differs_between_clients():
    from fedweave.methods.plora import per_client_a

    exp = fedweave.build_experiment(_cfg(a_init="per_client"))
    m = FlatModel(exp.model_factory(), exp.roles)
    per_client_a(m, 0, 1)
    first = m.personal.clone()
    per_client_a(m, 0, 2)
    assert not torch.equal(first, m.personal)
    per_client_a(m, 0, 1)
    assert torch.equal(first, m.personal)


def test_fedavg_lora_shares_A_and_B_and_local_shares_nothing(tmp_path):
    both = fedweave.build_experiment(_cfg(share="both"))
    names = _names(both.spec, "trainable")
    assert any(".lora_A." in n for n in names) and any(".lora_B." in n for n in names)
    assert both.spec.num_personal == 0
    local = fedweave.run(_cfg(share="local"), out=tmp_path / "local")
    assert local.params.numel() == 0 and local.status == "completed"
    # the global model stays the base model (B = 0); each client's own adapters score better
    last = local.history[-1]
    assert last["personalized_acc_mean"] < last["perplexity"]
    frozen_a = fedweave.build_experiment(_cfg(freeze_a=True))
    assert all(".lora_B." in n for n in _names(frozen_a.spec, "trainable")) and frozen_a.spec.num_personal == 0


def test_plora_rejects_models_without_linear_layers(tmp_path):
    cfg = fedweave.load_config({
        "data": {"dataset": "sr2:digits", "partition": {"num_clients": 3}}, "task": {"kind": "restoration"},
        "model": {"name": "srnet"}, "method": {"name": "plora"}, "schedule": {"clients_per_round": 2},
    })
    with pytest.raises(ConfigError, match="nn.Linear layers"):
        fedweave.build_experiment(cfg)
    with pytest.raises(ConfigError, match="nn.Linear layers"):
        fedweave.run(cfg, out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # rejected before the run directory is made


def test_plora_bad_parameters():
    with pytest.raises(ConfigError, match="matches no nn.Linear"):
        fedweave.build_experiment(_cfg(target=["decoder.*"]))
    with pytest.raises(ConfigError, match="per_client"):
        fedweave.build_experiment(_cfg(freeze_a=True, a_init="per_client"))
    with pytest.raises(ConfigError, match="share"):
        fedweave.build_experiment(_cfg(share="A"))


def test_lora_targets_are_matched_by_whole_name_not_by_suffix(tmp_path):
    """The cnn's default target is its first Linear, module "1"; its feature extractor has
    a ReLU named "0.1" (inside the feature block "0"). peft matches a list of names by suffix, which picked the
    ReLU and crashed: the targets must match whole names only."""
    from torch import nn

    from fedweave.models.zoo import build_cnn
    from fedweave.methods.plora import add_lora, select_targets

    module = build_cnn((1, 8, 8), 10)
    targets = select_targets(module, None, "cnn")
    assert targets == ["1"]
    add_lora(module, targets, rank=2, alpha=2.0, dropout=0.0)
    adapted = sorted(n.rsplit(".lora_A", 1)[0] for n, _ in module.named_modules() if n.endswith("lora_A"))
    assert adapted == ["1"]
    assert isinstance(module.get_submodule("0.1"), nn.ReLU)  # the feature block's ReLU untouched
    result = fedweave.run(None, out=tmp_path / "cnn", overrides=["method.name=plora", "model.name=cnn",
                                                                 "schedule.rounds=1"])
    assert result.status == "completed"
