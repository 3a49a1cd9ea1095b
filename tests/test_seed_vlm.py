"""The vision-language bundle (data ``shapesvqa``, model ``vlm``) and pLoRA's dynamic rule."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import fedweave
from fedweave.config import load_config
from fedweave.errors import ConfigError
from fedweave.experiment import build_experiment
from fedweave.messages import Broadcast
from fedweave.methods.base import ClientJob
from fedweave.methods.plora import blend, dynamic_weight
from fedweave.params import FlatModel
from fedweave.tasks import make_task
from fedweave.tasks.vision_language import (ANSWERS, COLOURS, PIXELS, POSITIONS, SHAPES, answer_of, build_vlm,
                                            dialect_answer, make_vqa, render)
from fedweave.train import TrainSettings

VQA = {
    "data": {"dataset": "shapesvqa:2", "partition": {"kind": "natural", "num_clients": 2}, "client_val_fraction": 0.2},
    "model": {"name": "vlm", "width": 8, "kwargs": {"n_layers": 1}},
    "client": {"epochs": 1, "batch_size": 32, "lr": 0.01},
    "schedule": {"rounds": 2, "clients_per_round": 2},
    "method": {"name": "plora", "rank": 2, "alpha": 4, "dynamic": True},
}


def test_vqa_is_deterministic_and_skewed_by_question_type_and_colour():
    x, y, c, kinds, colours = make_vqa(4, seed=5)
    x2, y2, *_ = make_vqa(4, seed=5)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, make_vqa(4, seed=6)[0])
    assert x.shape == (600, PIXELS + 4) and int(y.max()) < len(ANSWERS)
    for client in range(4):
        mine = c == client
        own_type = float(np.mean(kinds[mine] == client % 4))  # expected 0.7 + 0.3 / 4 = 0.775
        own_colours = float(np.mean(np.isin(colours[mine], [client % 4, (client + 1) % 4])))  # 0.8 + 0.2 / 2 = 0.9
        assert abs(own_type - 0.775) < 0.1 and abs(own_colours - 0.9) < 0.08
        assert own_type > 0.5 and float(np.mean(kinds[c == (client + 1) % 4] == client % 4)) < 0.2


def test_dialect_clients_answer_in_their_own_convention():
    x, y, c, _, _ = make_vqa(2, seed=5, per_client=20)
    xd, yd, _, _, _ = make_vqa(2, seed=5, per_client=20, dialect=True)
    assert torch.equal(x, xd)  # the same images and questions
    even, odd = torch.as_tensor(c == 0), torch.as_tensor(c == 1)
    assert torch.equal(yd[even], y[even])
    assert torch.equal(yd[odd], torch.tensor([dialect_answer(int(a)) for a in y[odd]]))
    # by hand: the next word of the group, cyclically
    assert [ANSWERS[dialect_answer(ANSWERS.index(w))] for w in ("red", "yellow", "bar", "bottom-right", "three")] == \
        ["green", "red", "square", "top-left", "one"]


def test_images_show_what_the_answers_say():
    rng = np.random.default_rng(0)
    img = render(rng, colour=2, shape=0, position=1, count=2)  # three blue squares, top-right
    quadrants = [img[:, :8, :8].sum(), img[:, :8, 8:].sum(), img[:, 8:, :8].sum(), img[:, 8:, 8:].sum()]
    assert int(np.argmax(quadrants)) == 1
    lit = img[:, :8, 8:].max(axis=0) > 0.5
    assert lit.sum() == 3 * 9  # three 3x3 squares
    assert int(np.argmax(img[:, :8, 8:].sum(axis=(1, 2)))) == 2  # blue dominates
    assert ANSWERS[answer_of("colour", 2, 0, 1, 2)] == COLOURS[2]
    assert ANSWERS[answer_of("position", 2, 0, 1, 2)] == POSITIONS[1]
    assert ANSWERS[answer_of("shape", 2, 0, 1, 2)] == SHAPES[0] and ANSWERS[answer_of("count", 2, 0, 1, 2)] == "three"


def test_vlm_forward_backward_reads_image_and_question():
    torch.manual_seed(0)
    model = build_vlm((PIXELS + 4,), width=8, n_layers=1)
    x, _, _, _, _ = make_vqa(1, seed=0, per_client=2)
    out = model(x)
    assert out.shape == (2, len(ANSWERS))
    out.square().sum().backward()
    assert float(model.encoder[0].weight.grad.abs().sum()) > 0 and float(model.tok.weight.grad.abs().sum()) > 0
    other_question = x.clone()
    other_question[:, PIXELS:] = torch.tensor([9.0, 10.0, 11.0, 12.0])  # "how many are there"
    assert not torch.allclose(model(other_question), model(x))


def test_dynamic_weight_and_blend_by_hand():
    assert dynamic_weight(1.0, 0.5, 0.1) == pytest.approx(1 / (1 + math.exp(-5)))
    assert dynamic_weight(0.5, 1.0, 0.1) == pytest.approx(1 / (1 + math.exp(5)))
    assert dynamic_weight(0.7, 0.7, 0.3) == 0.5
    g, o = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -2.0])
    assert torch.equal(blend(g, o, 0.25), torch.tensor([1.5, 1.0]))


def test_the_client_starts_from_the_loss_weighted_blend(tiny):
    cfg = tiny({**VQA, "client": {"epochs": 1, "batch_size": 32, "lr": 1e-12}})  # training moves nothing
    exp = build_experiment(load_config(cfg))
    model = FlatModel(exp.model_factory(), exp.roles)
    worker = SimpleNamespace(model=model, task=make_task("classification"), data=exp.data)
    glob = model.params.clone()
    own = glob + 0.3 * torch.randn(glob.shape, generator=torch.Generator().manual_seed(1))
    settings = TrainSettings(epochs=1, lr=1e-12, batch_size=32)
    first = exp.algorithm.train(ClientJob(0, 0, 0, Broadcast(0, glob.clone(), model.buffers.clone()), None, settings),
                                worker, torch.Generator().manual_seed(0))
    assert first.state["lambda"] == 0.0 and torch.allclose(first.state["b_own"], glob)
    # by hand: the two losses on the client's training data, then lambda and the blend
    probe = FlatModel(exp.model_factory(), exp.roles)
    idx = exp.data.client_train[0]
    losses = []
    for b in (glob, own):
        probe.params.copy_(b)
        losses.append(make_task("classification").evaluate(probe.module, exp.data.x[idx], exp.data.y[idx])["loss"])
    lam = 1 / (1 + math.exp(-(losses[0] - losses[1]) / 0.1))
    assert 0.0 < lam < 1.0
    model.params.copy_(glob)
    second = exp.algorithm.train(ClientJob(0, 1, 1, Broadcast(1, glob.clone(), model.buffers.clone()),
                                           {"b_own": own}, settings), worker, torch.Generator().manual_seed(0))
    assert second.state["lambda"] == pytest.approx(lam)
    assert torch.allclose(second.state["b_own"], glob + lam * (own - glob), atol=1e-6)
    assert torch.allclose(second.update.delta, lam * (own - glob), atol=1e-6)  # uploaded against the global B


def test_dynamic_needs_share_b_and_plora_needs_linear_layers(tiny):
    for share in ("both", "local"):
        with pytest.raises(ConfigError, match="share: B"):
            build_experiment(load_config(tiny({**VQA, "method": {**VQA["method"], "share": share}})))
    with pytest.raises(ConfigError, match="matches no nn.Linear"):
        build_experiment(load_config(tiny({**VQA, "method": {**VQA["method"], "target": ["blocks.*.attn.gate"]}})))


def test_tiny_end_to_end_dynamic_plora(tiny, tmp_path):
    cfg = tiny({**VQA, "eval": {"personalized": True}})
    result = fedweave.run(cfg, out=tmp_path / "run")
    assert result.status == "completed"
    assert 0.0 <= result.summary["personalized_acc_mean"] <= 1.0
    static = fedweave.run(tiny({**cfg, "method": {**VQA["method"], "dynamic": False}}), out=tmp_path / "static")
    assert static.status == "completed" and not torch.equal(static.params, result.params)


def test_cli_refuses_plora_on_a_model_without_linear_layers_with_exit_2(tmp_path):
    from typer.testing import CliRunner

    from fedweave.cli import app

    out = tmp_path / "x"
    result = CliRunner().invoke(app, ["run", "--quiet", "--out", str(out), "--set", "method.name=plora",
                                      "--set", "task.kind=restoration", "--set", "data.dataset=sr2:digits",
                                      "--set", "model.name=srnet", "--set", "schedule.rounds=1"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "nn.Linear" in text and "Traceback" not in result.output
    assert not out.exists()


def test_dynamic_state_resumes_exactly(tiny, tmp_path):
    """Interrupted after round 2 of 4 and resumed: the same metrics, the same global
    adapters and, per client, the same state (its own A, its own B and its λ) as the run
    that was never interrupted. Clients sampled 2 of 3 per round, so some client's state
    must survive rounds in which it does not train."""
    import json

    from helpers_eval import run_keeping_the_final_checkpoint

    cfg = tiny({**VQA, "data": {**VQA["data"], "dataset": "shapesvqa:3", "partition": {"kind": "natural",
                                                                                      "num_clients": 3}},
                "schedule": {"rounds": 4, "clients_per_round": 2}, "eval": {"personalized": True},
                "output": {"checkpoint_every": 1}})
    _, ref_server, ref_states = run_keeping_the_final_checkpoint(cfg, tmp_path / "ref")

    def stop_after_two(done, total, record):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fedweave.run(cfg, out=tmp_path / "int", progress=stop_after_two)
    mid = torch.load(tmp_path / "int" / "checkpoint.pt", weights_only=False)
    assert any("b_own" in (st.load() if hasattr(st, "load") else st) for st in mid["client_states"].values())

    def stop_at_the_end(done, total, record):
        if done == total:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fedweave.resume(tmp_path / "int", progress=stop_at_the_end)
    ckpt = torch.load(tmp_path / "int" / "checkpoint.pt", weights_only=False)
    states = {cid: (st.load() if hasattr(st, "load") else st) for cid, st in ckpt["client_states"].items()}

    def lines(path):
        return [{k: v for k, v in json.loads(x).items() if k != "wall_time_s"}
                for x in (path / "metrics.jsonl").read_text().splitlines()]

    assert len(lines(tmp_path / "ref")) == 4 and lines(tmp_path / "int") == lines(tmp_path / "ref")
    assert torch.equal(ckpt["state"]["params"], ref_server["params"])
    assert sorted(states) == sorted(ref_states) == [0, 1, 2]
    for cid, ref in ref_states.items():
        assert sorted(states[cid]) == sorted(ref) and {"b_own", "lambda", "personal"} <= set(ref)
        assert states[cid]["lambda"] == ref["lambda"]
        assert torch.equal(states[cid]["b_own"], ref["b_own"]) and torch.equal(states[cid]["personal"], ref["personal"])
    assert any(0.0 < ref["lambda"] < 1.0 for ref in ref_states.values())  # the blend was exercised


def test_unset_width_follows_the_pretrained_base_and_a_mismatch_is_refused(tmp_path):
    """The shipped base (pretrain_vlm, width 32) loads with model.width unset; the model
    built is that base, tensor for tensor. A width the base does not have is a
    ConfigError naming both widths (exit 2 on the CLI, before any run directory)."""
    from typer.testing import CliRunner

    from fedweave.cli import app
    from fedweave.tasks.vision_language import DEFAULT_VLM_WIDTH, pretrain_vlm

    base = tmp_path / "base.pt"
    pretrain_vlm(str(base), epochs=1)
    saved = torch.load(base, weights_only=True)
    assert saved["img_proj.weight"].shape == (32, 32)
    data = {"dataset": "shapesvqa:2", "partition": {"kind": "natural", "num_clients": 2}}
    sched = {"clients_per_round": 2}
    exp = build_experiment(load_config({"data": data, "schedule": sched, "model": {"name": "vlm", "kwargs": {"init_from": str(base)}},
                                        "method": {"name": "plora", "rank": 2}}))
    module = exp.model_factory()
    loaded = {n: t for n, t in module.state_dict().items() if ".lora_" not in n}
    assert {n.replace(".base_layer", "") for n in loaded} == set(saved)
    assert all(torch.equal(t, saved[n.replace(".base_layer", "")]) for n, t in loaded.items())
    assert exp.config.model.width is None
    # explicit and equal: fine; explicit and different: refused
    build_experiment(load_config({"data": data, "schedule": sched, "model": {"name": "vlm", "width": 32, "kwargs": {"init_from": str(base)}}}))
    with pytest.raises(ConfigError, match="model.width is 16.*has width 32.*model.width: 32"):
        build_experiment(load_config({"data": data, "schedule": sched, "model": {"name": "vlm", "width": 16,
                                                              "kwargs": {"init_from": str(base)}}}))
    # no base: the model's own default, 32 (not the 16 other models get when width is unset)
    assert build_vlm((PIXELS + 4,), width=None).img_proj.weight.shape == (DEFAULT_VLM_WIDTH, DEFAULT_VLM_WIDTH) == (32, 32)
    fresh = build_experiment(load_config({"data": data, "schedule": sched, "model": {"name": "vlm"}}))
    assert fresh.model_factory().img_proj.weight.shape == (32, 32)
    skeleton = build_experiment(load_config({"data": {"dataset": "skeleton:2", "partition": {"kind": "natural",
                                                                                              "num_clients": 2}},
                                             "schedule": sched, "model": {"name": "stgcn"}}))
    assert skeleton.model_factory().fc.in_features == 2 * 16  # stgcn's blocks are (w, 2w, 2w) with w = 16
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--quiet", "--out", str(out), "--set", "data.dataset=shapesvqa:2",
                                      "--set", "data.partition.kind=natural", "--set", "data.partition.num_clients=2",
                                      "--set", "model.name=vlm", "--set", "model.width=8",
                                      "--set", f"model.kwargs.init_from={base}", "--set", "schedule.rounds=1",
                                      "--set", "schedule.clients_per_round=2"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "has width 32" in text and "Traceback" not in result.output
    assert not out.exists()
