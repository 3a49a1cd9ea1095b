"""Every method whose clients upload more than the standard update declares what, and the
declaration catches a missing, a mis-shaped and an out-of-range value (issue #20).

The methods with extra uploads are found from the code, not listed by hand: any method
module that writes an upload payload (``payload[...] =``, ``payload={``, an
``upload(...)`` returning entries, ``upload_payload``) must declare a schema that names the
entry, so a new method with uploads and no schema fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from fedweave.messages import Broadcast, Update
from fedweave.methods.payloads import PayloadDims, method_payload_schema
from fedweave.methods.registry import get_method, registered
from fedweave.methods.stages import get_weighting

METHODS_DIR = Path(__file__).resolve().parents[1] / "src" / "fedweave" / "methods"
P = 10  # entries of the trainable vector in these checks
DIMS = PayloadDims(params=P, classes=3, clients=4, dtype=torch.float32)


def update(payload: dict, num_steps: int = 5) -> Update:
    return Update(client_id=0, base_version=0, delta=torch.zeros(P), buffers=torch.zeros(0), num_examples=8,
                  num_steps=num_steps, payload=payload)


def schema_of(name: str):
    info = get_method(name)
    schema = info.payload_schema
    stage = {"feddisco": "disco", "fedce": "fedce"}.get(name)
    if stage is not None:  # weighting stages carry their own declaration
        from fedweave.methods.stages import StagedStrategy

        class _S(StagedStrategy):
            def __init__(self, w):
                self.weighting, self.combiner = w, None

        from fedweave.config import load_config
        from fedweave.methods.stages import make_stage

        cfg = load_config({"method": {"name": name}, "data": {"partition": {"num_clients": 4}},
                           "schedule": {"clients_per_round": 4}})
        schema = method_payload_schema(info, _S(make_stage("weighting", stage, cfg, {})))
    return schema


def test_methods_that_write_upload_payloads_declare_every_entry():
    writes = re.compile(r"""payload\[\s*(?:"([\w]+)"|([A-Z_]+))\s*\]\s*=|payload=\{\*\*u\.payload,\s*"(\w+)\"""")
    found: dict[str, set[str]] = {}
    for path in METHODS_DIR.glob("*.py"):
        text = path.read_text()
        consts = dict(re.findall(r'^([A-Z_]+) = "(\w+)"', text, flags=re.M))
        keys = set()
        for lit, const, lit2 in writes.findall(text):
            keys.add(lit or lit2 or consts.get(const, const))
        # entries returned by a stage client's upload(...) -> (entries, state), or put in a payload dict literal
        for m in re.finditer(r'payload = \{([^}]*)\}', text):
            keys |= set(re.findall(r'"(\w+)":', m.group(1)))
        if "def upload(" in text:
            keys |= {consts[c] for c in re.findall(r'return \{([A-Z_]+): [^}]*\}, ', text) if c in consts}
        keys.discard("")
        if keys:
            found[path.stem] = keys
    # a self-check of the scan: the three methods and the stage uploads are seen
    assert {"delta_c"} <= found["scaffold"] and {"qffl_loss"} <= found["qffl"]
    assert {"label_hist"} <= found["feddisco"] and {"fedce_m"} <= found["fedce"]
    names = {info.name: info for info in registered().values()}
    for module, keys in found.items():
        if module in ("stages", "base"):
            continue
        declared = schema_of(module).names if module in names else set()
        assert keys <= declared, f"methods/{module}.py uploads {sorted(keys - declared)} without a payload_schema entry"


SCAFFOLD_OK = {"delta_c": torch.zeros(P)}
CASES = {
    # method: (a valid payload, [(bad payload or (payload, steps), words of the reason)])
    "scaffold": (SCAFFOLD_OK, [
        ({}, "lacks payload 'delta_c'"),
        ({"delta_c": torch.zeros(P + 1)}, "shape (11,)"),
        ({"delta_c": torch.zeros(P, dtype=torch.float64)}, "dtype"),
        ({"delta_c": 1.0}, "must be a tensor"),
    ]),
    "qffl": ({"qffl_loss": 0.7}, [
        ({}, "lacks payload 'qffl_loss'"),
        ({"qffl_loss": torch.zeros(2)}, "must be a number"),
        ({"qffl_loss": -0.5}, "below its minimum 0"),
    ]),
    "fednova": ({}, [
        (({}, 0), "at least 1"),
    ]),
    "pgfed": ({"grad": torch.zeros(P), "loss_minus": -3.0, "a": torch.full((2,), 0.5)}, [
        ({"loss_minus": -3.0, "a": torch.full((2,), 0.5)}, "lacks payload 'grad'"),
        ({"grad": torch.zeros(P), "a": torch.full((2,), 0.5)}, "lacks payload 'loss_minus'"),
        ({"grad": torch.zeros(P), "loss_minus": -3.0}, "lacks payload 'a'"),
        ({"grad": torch.zeros(P), "loss_minus": -3.0, "a": torch.full((3,), 0.5)}, "shape (3,)"),
        ({"grad": torch.zeros(P), "loss_minus": -3.0, "a": torch.tensor([0.5, -0.1])}, "below its minimum 0"),
    ]),
    "feddisco": ({"label_hist": torch.tensor([3.0, 0.0, 5.0])}, [
        ({}, "lacks payload 'label_hist'"),
        ({"label_hist": torch.ones(4)}, "shape (4,)"),
        ({"label_hist": torch.tensor([3.0, -1.0, 5.0])}, "below its minimum 0"),
    ]),
    "fedce": ({"fedce_m": 0.25}, [
        ({}, "lacks payload 'fedce_m'"),
        ({"fedce_m": torch.zeros(3)}, "must be a number"),
        ({"fedce_m": 1.5}, "above its maximum 1"),
    ]),
    "frl": ({"ranking": [torch.tensor([2, 0, 1]), torch.tensor([1, 0])]}, [
        ({}, "lacks payload 'ranking'"),
        ({"ranking": [torch.tensor([2, 0, 1])]}, "has 1 layers; the model has 2"),
        ({"ranking": [torch.tensor([2, 0, 1]), torch.tensor([1, 1])]}, "not a permutation"),
        ({"ranking": [torch.tensor([2, 0, 1, 3]), torch.tensor([1, 0])]}, "ranks 4 edges"),
    ]),
}
CASES["pgfedmo"] = CASES["pgfed"]


def broadcast_for(method: str):
    b = Broadcast(0, torch.zeros(P), torch.zeros(0))
    if method in ("pgfed", "pgfedmo"):  # a task in round 2: the a-row of the two previous clients
        return b.with_payload(a=torch.full((2,), 0.25))
    if method == "frl":
        from fedweave.methods.frl import RankBroadcast

        return RankBroadcast(0, torch.zeros(P), torch.zeros(0), layer_sizes=(3, 2))
    return b


@pytest.mark.parametrize("method", sorted(CASES))
def test_schema_accepts_a_valid_upload_and_names_what_is_wrong_with_a_bad_one(method):
    schema = schema_of(method)
    good, bad = CASES[method]
    sent = broadcast_for(method)
    assert schema.check(update(good), DIMS, sent) is None
    for payload, words in bad:
        steps = 5
        if isinstance(payload, tuple):
            payload, steps = payload
        reason = schema.check(update(payload, steps), DIMS, sent)
        assert reason is not None and words in reason, (method, payload, reason)


def test_pgfed_round_one_has_no_a_to_send_back():
    # in round 1 the task carries no a-row: an upload without "a" is complete
    schema = schema_of("pgfed")
    first = Broadcast(0, torch.zeros(P), torch.zeros(0))
    assert schema.check(update({"grad": torch.zeros(P), "loss_minus": 0.0}), DIMS, first) is None


def test_ferret_coefficient_count_follows_its_block_size():
    from fedweave.config import load_config

    cfg = load_config({"method": {"name": "ferret", "block_size": 4, "num_vectors": 2}})
    dims = PayloadDims(params=P, classes=3, clients=4, config=cfg)
    schema = schema_of("ferret")
    # blocks of 4, 4 and 2 entries; min(2, size) coefficients each: 2 + 2 + 2
    ok = Update(client_id=0, base_version=0, delta=None, buffers=None, num_examples=8, num_steps=1,
                payload={"coefficients": torch.zeros(6)})
    assert schema.check(ok, dims) is None
    ok.payload["coefficients"] = torch.zeros(7)
    assert "shape (7,)" in schema.check(ok, dims)
    del ok.payload["coefficients"]
    assert "lacks payload 'coefficients'" in schema.check(ok, dims)


def test_non_finite_payloads_are_left_to_the_finiteness_check():
    # the ledger counts a non-finite update as one (a round of nothing else has diverged)
    assert schema_of("qffl").check(update({"qffl_loss": float("nan")}), DIMS) is None
    assert schema_of("scaffold").check(update({"delta_c": torch.full((P,), float("inf"))}), DIMS) is None
    assert not update({"qffl_loss": float("nan")}).is_finite()


def test_methods_without_extra_uploads_accept_the_standard_update():
    assert schema_of("fedavg").check(update({}, num_steps=0), DIMS) is None
    assert get_weighting("size") is not None
