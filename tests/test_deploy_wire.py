"""Deployment building blocks without a network: the wire format, tokens, the .proto and
its committed generated code, and the `fedweave tokens new` command."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest
import torch

pytest.importorskip("grpc")
pytest.importorskip("google.protobuf")

from typer.testing import CliRunner  # noqa: E402

from fedweave.cli import app  # noqa: E402
from fedweave.deploy import fedweave_pb2 as pb2  # noqa: E402
from fedweave.deploy.tokens import TokenStore, hash_token  # noqa: E402
from fedweave.deploy.wire import (  # noqa: E402
    MAX_FRAME_BYTES, PROTOCOL, Assembler, WireError, assemble, decode_broadcast, decode_update, dump_header,
    encode_broadcast, encode_update,
)
from fedweave.errors import ConfigError  # noqa: E402
from fedweave.messages import Broadcast, Update  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "src" / "fedweave" / "deploy"


def _frames(encoded, frame_bytes, extra=None):
    return [pb2.Frame(header=h, data=bytes(d)) for h, d in encoded.frames(frame_bytes, extra)]


def _update(**kw) -> Update:
    base = dict(client_id=3, base_version=7, delta=torch.randn(10), buffers=torch.randn(4), num_examples=50, num_steps=2,
                metrics={"loss": 0.5}, payload={"hist": torch.arange(5), "c": [torch.ones(2, 3), 1.5], "pair": (1, True)})
    base.update(kw)
    return Update(**base)


# -- wire format ----------------------------------------------------------------------------------------


def test_broadcast_round_trips_through_small_frames():
    b = Broadcast(4, torch.randn(1000), torch.randn(6, dtype=torch.float64),
                  {"cv": torch.randn(1000), "scale": 0.25, "steps": 3, "flags": [True, 2.0], "h": torch.randn(2).to(torch.bfloat16)},
                  {"lr": 0.1})
    enc = encode_broadcast(b)
    frames = _frames(enc, 512, {"round": 2, "counter": 5})
    assert len(frames) > 8 and frames[0].header and not any(f.header for f in frames[1:])
    assert all(len(f.data) <= 512 for f in frames)
    header, data, wire = assemble(frames, max_data_bytes=1 << 20)
    assert header["round"] == 2 and header["counter"] == 5 and wire == sum(f.ByteSize() for f in frames)
    out = decode_broadcast(header, data)
    assert out.version == 4 and out.config == {"lr": 0.1}
    assert torch.equal(out.params, b.params) and torch.equal(out.buffers, b.buffers) and out.buffers.dtype == torch.float64
    assert torch.equal(out.payload["cv"], b.payload["cv"]) and out.payload["h"].dtype == torch.bfloat16
    assert out.payload["scale"] == 0.25 and out.payload["steps"] == 3 and out.payload["flags"] == [True, 2.0]
    assert wire >= b.num_bytes()  # the wire carries at least what the analytic count says


def test_update_round_trips_and_keeps_types():
    u = _update()
    enc = encode_update(u, round=1, counter=0)
    header, data, _ = assemble(_frames(enc, 64), 1 << 20)
    out = decode_update(header, data)
    assert header["round"] == 1 and header["counter"] == 0
    assert (out.client_id, out.base_version, out.num_examples, out.num_steps) == (3, 7, 50, 2)
    assert torch.equal(out.delta, u.delta) and torch.equal(out.buffers, u.buffers) and out.params is None
    assert torch.equal(out.payload["hist"], u.payload["hist"]) and out.payload["hist"].dtype == torch.int64
    assert out.payload["pair"] == (1, True) and isinstance(out.payload["pair"], tuple)
    assert out.metrics == {"loss": 0.5} and out.num_bytes() == u.num_bytes()


def test_full_model_update_sends_params_only_and_rebuilds_delta():
    sent = torch.randn(10)
    new = sent + torch.randn(10)
    u = _update(params=new, delta=new - sent, payload={})
    enc = encode_update(u, round=0, counter=0)
    assert enc.header["delta"] is None and enc.header["params"] is not None
    header, data, _ = assemble(_frames(enc, 1 << 20), 1 << 20)
    out = decode_update(header, data, sent_params=sent)
    assert torch.equal(out.params, new) and torch.equal(out.delta, new - sent)


def test_model_larger_than_grpc_message_limit_is_framed():
    big = torch.randn(3 << 20)  # 12 MiB, three times gRPC's default 4 MiB message limit
    enc = encode_broadcast(Broadcast(0, big, torch.zeros(0)))
    frames = _frames(enc, 1 << 20)
    assert len(frames) == 12 and max(f.ByteSize() for f in frames) < (4 << 20)
    header, data, _ = assemble(frames, 16 << 20)
    assert torch.equal(decode_broadcast(header, data).params, big)


def _header(enc, **changes):
    h = json.loads(json.dumps(enc.header))
    h.update(changes)
    return h


@pytest.mark.parametrize("change, needle", [
    ({"protocol": "other/9"}, "protocol"),
    ({"data_bytes": 1 << 40}, "limit"),
    ({"data_bytes": -1}, "data_bytes"),
])
def test_assembler_rejects_bad_headers(change, needle):
    enc = encode_update(_update(), round=0, counter=0)
    a = Assembler(1 << 20)
    with pytest.raises(WireError, match=needle):
        a.first(dump_header(_header(enc, **change)))


def test_assembler_rejects_bad_framing():
    enc = encode_update(_update(), round=0, counter=0)
    with pytest.raises(WireError, match="JSON"):
        Assembler(1 << 20).first(b"{not json")
    with pytest.raises(WireError, match="header"):
        Assembler(1 << 20).feed(b"", b"abc", 3)  # no header first
    frames = _frames(enc, 32)
    with pytest.raises(WireError, match="ended after"):  # a frame missing
        assemble(frames[:-1], 1 << 20)
    with pytest.raises(WireError, match="more data"):
        assemble(frames + [pb2.Frame(data=b"x")], 1 << 20)
    with pytest.raises(WireError, match="first frame"):
        assemble(frames[:1] + [pb2.Frame(header=b"{}", data=b"")] + frames[1:], 1 << 20)
    with pytest.raises(WireError, match="frame_bytes"):
        list(enc.frames(MAX_FRAME_BYTES + 1))


@pytest.mark.parametrize("mutate, needle", [
    (lambda h: h["tensors"][0].update(dtype="complex64"), "not allowed"),
    (lambda h: h["tensors"][0].update(shape=[11]), "needs"),
    (lambda h: h["tensors"][0].update(offset=2), "misaligned"),
    (lambda h: h["tensors"][0].update(offset=1 << 20), "outside"),
    (lambda h: h["tensors"][0].update(shape=[-10]), "non-negative"),
    (lambda h: h.update(buffers=0), "twice"),
    (lambda h: h.update(buffers=None), "not referenced"),
    (lambda h: h.update(delta=None), "not referenced"),  # payload-only is allowed, so the tensor is left over
    (lambda h: h.update(num_examples=-5), "num_examples"),
    (lambda h: h.update(num_examples="many"), "num_examples"),
    (lambda h: h.update(metrics={"loss": "low"}), "metrics"),
    (lambda h: h.update(payload={"x": {"zzz": 1}}), "malformed"),
    (lambda h: h.update(kind="broadcast"), "expected an update"),
])
def test_decoder_validates_every_field(mutate, needle):
    enc = encode_update(_update(), round=0, counter=0)
    h = _header(enc)
    mutate(h)
    with pytest.raises(WireError, match=needle):
        decode_update(h, bytearray(enc.data))


def test_unsendable_values_are_refused():
    with pytest.raises(WireError, match="payload values"):
        encode_update(_update(payload={"s": "text"}), round=0, counter=0)
    with pytest.raises(WireError, match="dtype"):
        encode_update(_update(delta=torch.zeros(2, dtype=torch.complex64)), round=0, counter=0)


# -- tokens ---------------------------------------------------------------------------------------------


def test_tokens_bind_ids_and_file_holds_hashes_only(tmp_path):
    store, plain = TokenStore.generate(3, first_id=5, max_examples=100)
    path = tmp_path / "tokens.json"
    store.save(path)
    text = path.read_text()
    assert all(tok not in text for tok in plain.values())
    assert all(hash_token(tok) in text for tok in plain.values())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = TokenStore.load(path)
    assert {loaded.client_id(t): cid for cid, t in plain.items()} == {5: 5, 6: 6, 7: 7}
    assert loaded.client_id("fwt_wrong") is None and loaded.client_id("") is None and loaded.client_id(None) is None
    assert loaded.max_examples(6) == 100
    assert len(set(plain.values())) == 3
    with pytest.raises(ConfigError, match="exists"):
        store.save(path)


@pytest.mark.parametrize("content, needle", [
    ("nope", "not valid JSON"),
    ('{"format": 2, "hash": "sha256", "clients": []}', "not a fedweave token file"),
    ('{"format": 1, "hash": "sha256", "clients": []}', "no clients"),
    ('{"format": 1, "hash": "sha256", "clients": [{"client_id": 0, "sha256": "ab"}]}', "64 hex"),
])
def test_bad_token_files_are_explained(tmp_path, content, needle):
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=needle):
        TokenStore.load(path)
    with pytest.raises(ConfigError, match="does not exist"):
        TokenStore.load(tmp_path / "missing.json")


def test_cli_tokens_new_prints_each_token_once(tmp_path):
    out = tmp_path / "tokens.json"
    res = CliRunner().invoke(app, ["tokens", "new", "--clients", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    lines = [ln.split() for ln in res.stdout.splitlines() if ln.startswith(tuple("0123456789"))]
    assert [int(cid) for cid, _ in lines] == [0, 1, 2, 3]
    store = TokenStore.load(out)
    assert all(store.client_id(tok) == int(cid) for cid, tok in lines)
    again = CliRunner().invoke(app, ["tokens", "new", "--clients", "2", "--out", str(out)])
    assert again.exit_code == 2 and "exists" in again.output


# -- the .proto and its generated code ----------------------------------------------------------------


def test_generated_code_matches_the_proto():
    """The committed modules describe exactly the services and messages of fedweave.proto."""
    text = re.sub(r"//[^\n]*", "", (DEPLOY / "fedweave.proto").read_text())
    rpcs = re.findall(r"rpc\s+(\w+)\s*\(\s*(stream\s+)?(\w+)\s*\)\s*returns\s*\(\s*(stream\s+)?(\w+)\s*\)", text)
    service = pb2.DESCRIPTOR.services_by_name["Federation"]
    got = {(m.name, m.client_streaming, m.input_type.name, m.server_streaming, m.output_type.name) for m in service.methods}
    assert got == {(n, bool(cs), i, bool(ss), o) for n, cs, i, ss, o in rpcs}
    messages = dict(re.findall(r"message\s+(\w+)\s*\{([^}]*)\}", text))
    assert set(messages) == set(pb2.DESCRIPTOR.message_types_by_name)
    for name, body in messages.items():
        fields = {(f, int(n)) for f, n in re.findall(r"(\w+)\s*=\s*(\d+)\s*;", body)}
        desc = pb2.DESCRIPTOR.message_types_by_name[name]
        assert fields == {(f.name, f.number) for f in desc.fields}, name


def test_committed_descriptor_is_the_one_protoc_compiles_from_the_proto(tmp_path):
    """Whatever grpcio-tools the dev extra installed (not only the pinned generator): protoc
    compiles fedweave.proto into a FileDescriptorProto, and the committed fedweave_pb2.py
    must embed exactly that descriptor (every message, field, type, label and RPC), so a
    .proto edited without regenerating the code fails here."""
    pytest.importorskip("grpc_tools")
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    src = DEPLOY.parents[1]
    out = tmp_path / "fedweave.desc"
    rc = protoc.main(["protoc", f"-I{src}", f"--descriptor_set_out={out}", str(DEPLOY / "fedweave.proto")])
    assert rc == 0
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    assert len(compiled) == 1
    # a descriptor set records every field's json_name, derived from its name; the Python
    # generator embeds only explicit ones, and the .proto declares none
    assert "json_name" not in (DEPLOY / "fedweave.proto").read_text()

    def drop_json_names(messages):
        for m in messages:
            for f in m.field:
                f.ClearField("json_name")
            drop_json_names(m.nested_type)

    drop_json_names(compiled[0].message_type)
    committed = descriptor_pb2.FileDescriptorProto.FromString(pb2.DESCRIPTOR.serialized_pb)
    assert committed == compiled[0]


def test_generated_code_is_current_when_the_pinned_generator_is_installed():
    grpc_tools = pytest.importorskip("grpc_tools")
    from importlib.metadata import PackageNotFoundError, version

    from fedweave.deploy import gen_proto

    try:
        found = version("grpcio-tools")
    except PackageNotFoundError:
        found = None
    if found != gen_proto.GENERATOR:
        pytest.skip(f"grpcio-tools {found} is not the pinned {gen_proto.GENERATOR} ({grpc_tools.__file__})")
    assert gen_proto.main(["--check"]) == 0


def test_protocol_header_is_json():
    assert json.loads(dump_header({"protocol": PROTOCOL, "x": float("nan")}))["protocol"] == PROTOCOL
