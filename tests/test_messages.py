"""Broadcast / Update: analytic byte counts and finiteness checks (fedweave.messages)."""

from __future__ import annotations

import pytest
import torch

from fedweave.messages import SCALAR_BYTES, Broadcast, Update, payload_bytes, tensor_bytes


def test_scalar_bytes_is_eight():
    assert SCALAR_BYTES == 8


def test_tensor_bytes_by_dtype():
    assert tensor_bytes(torch.zeros(10)) == 40
    assert tensor_bytes(torch.zeros(10, dtype=torch.float64)) == 80
    assert tensor_bytes(torch.zeros(3, 4, dtype=torch.float16)) == 24
    assert tensor_bytes(torch.zeros(5, dtype=torch.int64)) == 40
    assert tensor_bytes(torch.zeros(0)) == 0
    assert tensor_bytes(None) == 0


def test_update_bytes_delta_only():
    u = Update(client_id=3, base_version=1, delta=torch.zeros(10), buffers=None, num_examples=7)
    # 40 bytes of float32 + four scalars (client id, base version, examples, steps)
    assert u.num_bytes() == 40 + 4 * 8


def test_update_bytes_with_buffers_metrics_and_payload():
    u = Update(
        client_id=0, base_version=0, delta=torch.zeros(10), buffers=torch.zeros(6), num_examples=5, num_steps=2,
        metrics={"loss": 0.3, "acc": 0.9},
        payload={"c": torch.zeros(10), "hist": torch.zeros(10, dtype=torch.int64), "q": 2.0, "flag": True,
                 "parts": [torch.zeros(3), 1.0]},
    )
    expected = 40 + 24 + (40 + 80 + 8 + 8 + (12 + 8)) + 8 * (4 + 2)
    assert u.num_bytes() == expected


def test_broadcast_bytes():
    b = Broadcast(version=4, params=torch.zeros(10), buffers=torch.zeros(2))
    assert b.num_bytes() == 40 + 8 + 8  # params + buffers + version
    b2 = b.with_payload(c=torch.zeros(10))
    assert b2.num_bytes() == 40 + 8 + 40 + 8
    # config does not count as payload
    b3 = Broadcast(version=0, params=torch.zeros(10), buffers=torch.zeros(0), config={"lr": 0.1, "steps": 5})
    assert b3.num_bytes() == 40 + 8


def test_with_payload_shares_tensors_and_keeps_original():
    params = torch.zeros(3)
    b = Broadcast(1, params, torch.zeros(0), {"a": 1.0}, {"lr": 0.1})
    b2 = b.with_payload(c=torch.ones(3))
    assert b2.params is params
    assert set(b2.payload) == {"a", "c"}
    assert set(b.payload) == {"a"}
    b2.config["lr"] = 0.5
    assert b.config["lr"] == 0.1


def test_payload_bytes_rejects_other_types():
    with pytest.raises(TypeError, match="Payload values"):
        payload_bytes({"name": "hello"})


def _update(**kw):
    base = dict(client_id=0, base_version=0, delta=torch.ones(4), buffers=torch.ones(2), num_examples=3,
                metrics={"loss": 0.5})
    base.update(kw)
    return Update(**base)


def test_is_finite_true_for_clean_update():
    assert _update().is_finite()
    assert _update(buffers=None, delta=None, metrics={}).is_finite()
    # integer tensors are never non-finite
    assert _update(payload={"hist": torch.tensor([1, 2, 3])}).is_finite()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_is_finite_detects_bad_delta(bad):
    d = torch.ones(4)
    d[2] = bad
    assert not _update(delta=d).is_finite()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_is_finite_detects_bad_buffers(bad):
    assert not _update(buffers=torch.tensor([0.0, bad])).is_finite()


def test_is_finite_detects_bad_payload_tensor():
    assert not _update(payload={"c": torch.tensor([1.0, float("nan")])}).is_finite()
    assert not _update(payload={"c": torch.tensor([float("inf")], dtype=torch.float64)}).is_finite()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_is_finite_detects_bad_metrics(bad):
    assert not _update(metrics={"loss": bad}).is_finite()
    assert _update(metrics={"loss": 1e30}).is_finite()


@pytest.mark.parametrize(
    "payload",
    [{"parts": [torch.ones(2), torch.tensor([float("nan")])]}, {"q": float("nan")}, {"q": float("inf")}],
    ids=["list-tensor-nan", "scalar-nan", "scalar-inf"],
)
def test_is_finite_detects_bad_nested_or_scalar_payload(payload):
    assert not _update(payload=payload).is_finite()
