"""The language_model task, the pydocs text source and the transformer model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fedweave
from fedweave.data.sources import load_source
from fedweave.errors import ConfigError, ModelError
from fedweave.lm import (
    FEDERATED_MODULES, PUBLIC_MODULES, VOCAB_SIZE, LanguageModelTask, build_transformer, decode, encode,
    module_docstrings, sequences,
)
from fedweave.tasks import make_task

LM = {
    "data": {"dataset": "pydocs:16", "partition": {"kind": "natural"}},
    "task": {"kind": "language_model"},
    "model": {"name": "transformer", "kwargs": {"d_model": 32, "n_layers": 1, "n_heads": 2}},
    "client": {"local_steps": 3, "batch_size": 16, "lr": 0.003, "optimizer": "adam"},
    "schedule": {"rounds": 2, "clients_per_round": 4},
    "eval": {"batch_size": 4096},
}


def test_vocabulary_is_fixed_and_round_trips():
    text = "Return the\n'value' ~ 42!"
    ids = encode(text)
    assert ids.dtype == np.int64 and ids.min() >= 1 and ids.max() < VOCAB_SIZE == 97
    assert decode(ids) == text
    assert encode("é\t").tolist() == [0, 0]  # anything outside printable ASCII and newline is 'unknown'


def test_sequences_are_shifted_windows():
    ids = np.arange(10)
    x, y = sequences(ids, 4)
    assert x.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert y.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert sequences(np.arange(4), 4)[0].shape == (0, 4)


def test_docstrings_are_public_and_in_source_order():
    src = '"""Mod."""\ndef f():\n    """F."""\ndef _g():\n    """G."""\nclass C:\n    """C."""\n    def m(self):\n        """M."""\n'
    assert module_docstrings(src) == "Mod.\n\nF.\n\nC.\n\nM."


def test_pydocs_source_natural_documents():
    src = load_source("pydocs:32")
    assert src.x_train.dtype == torch.int64 and src.x_train.shape[1] == 32 and src.input_shape == (32,)
    assert torch.equal(src.x_train[:, 1:], src.y_train[:, :-1])  # the target is the input shifted by one
    assert src.num_classes == VOCAB_SIZE
    assert np.array_equal(src.client_ids, src.labels)
    assert np.unique(src.client_ids).tolist() == list(range(len(FEDERATED_MODULES)))
    again = load_source("pydocs:32")
    assert torch.equal(src.x_train, again.x_train)  # deterministic
    public = load_source("pydocs:32", data_name="public")
    assert len(np.unique(public.client_ids)) == len(PUBLIC_MODULES)
    assert not set(PUBLIC_MODULES) & set(FEDERATED_MODULES)
    with pytest.raises(ConfigError, match="pydocs"):
        load_source("pydocs:x")
    with pytest.raises(ConfigError, match="federated, public"):
        load_source("pydocs", data_name="private")


def test_perplexity_is_exp_of_the_mean_token_loss_over_the_whole_split():
    torch.manual_seed(0)
    task = make_task("language_model")
    assert isinstance(task, LanguageModelTask) and task.metric_name == "perplexity" and not task.higher_is_better
    model = build_transformer((8,), 11, d_model=16, n_layers=1, n_heads=2)
    x = torch.randint(0, 11, (37, 8))
    y = torch.randint(0, 11, (37, 8))
    y[0, :5] = -100  # ignored positions: sequences with different token counts
    with torch.no_grad():
        logits = model(x)
    mask = y != -100
    expected = F.cross_entropy(logits[mask], y[mask]).item()
    for bs in (5, 37, 1000):  # batching does not change the figures
        out = task.evaluate(model, x, y, batch_size=bs)
        assert out["loss"] == pytest.approx(expected, rel=1e-6)
        assert out["perplexity"] == pytest.approx(math.exp(expected), rel=1e-6)
    assert out["accuracy"] == pytest.approx((logits.argmax(-1) == y)[mask].float().mean().item())
    # per-sequence scores: exp of each sequence's mean token loss
    scores = task.per_example_score(logits, y)
    assert scores[1].item() == pytest.approx(math.exp(F.cross_entropy(logits[1], y[1]).item()), rel=1e-6)


def test_uniform_model_has_perplexity_of_the_vocabulary():
    task = LanguageModelTask()

    class Uniform(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(*x.shape, 13)

    x = torch.randint(0, 13, (6, 5))
    assert task.evaluate(Uniform(), x, x)["perplexity"] == pytest.approx(13.0)


def test_task_rejects_classifier_outputs():
    with pytest.raises(ModelError, match=r"\[batch, length, vocabulary\]"):
        LanguageModelTask().loss(torch.zeros(4, 10), torch.zeros(4, dtype=torch.long))


def test_transformer_is_causal_and_loads_weights(tmp_path):
    torch.manual_seed(0)
    model = build_transformer((12,), 20, d_model=16, n_layers=2, n_heads=4)
    x = torch.randint(0, 20, (2, 12))
    x2 = x.clone()
    x2[:, 7:] = (x2[:, 7:] + 1) % 20  # change the future
    with torch.no_grad():
        a, b = model(x), model(x2)
    assert a.shape == (2, 12, 20)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6) and not torch.allclose(a[:, 7:], b[:, 7:])
    path = tmp_path / "base.pt"
    torch.save(model.state_dict(), path)
    torch.manual_seed(1)
    loaded = build_transformer((12,), 20, d_model=16, n_layers=2, n_heads=4, init_from=str(path))
    with torch.no_grad():
        assert torch.equal(loaded(x), a)
    with pytest.raises(ModelError, match="does not fit"):
        build_transformer((12,), 20, d_model=32, n_heads=4, init_from=str(path))
    with pytest.raises(ModelError, match="Its options"):
        build_transformer((12,), 20, depth=3)
    with pytest.raises(ModelError, match="divisible"):
        build_transformer((12,), 20, d_model=30, n_heads=4)


def test_federated_language_model_run(tmp_path):
    result = fedweave.run(LM, out=tmp_path / "lm")
    s = result.summary
    assert s["status"] == "completed" and s["metric_name"] == "perplexity" and s["higher_is_better"] is False
    first, last = result.history[0], result.history[-1]
    assert last["perplexity"] == pytest.approx(math.exp(last["loss"]))
    assert last["perplexity"] < VOCAB_SIZE  # better than chance after a few steps
    assert s["best_metric"] == min(r["perplexity"] for r in result.history)
    assert first["perplexity"] >= last["perplexity"]


def test_bad_model_task_pairs_are_rejected():
    with pytest.raises(ModelError, match="token sequences"):
        fedweave.build_experiment(fedweave.load_config({"model": {"name": "transformer"}}))  # digits images
    cfg = {**LM, "model": {"name": "mlp", "hidden": [8]}}
    with pytest.raises(ModelError):
        fedweave.build_experiment(fedweave.load_config(cfg))
