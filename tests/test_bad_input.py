"""Bad input on the command line (issue 20): each case exits with code 2, prints one
error paragraph naming the problem and what is allowed, shows no traceback and leaves no
run directory behind."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from fedweave.cli import app
from fedweave.config import load_config
from fedweave.data import sources
from fedweave.data.sources import load_source
from fedweave.errors import ConfigError, DataError

MAX_CLASSES = 1 << 20  # the documented bound on class labels (docs/configuration.md)
SMALL = ["--set", "schedule.rounds=2", "--set", "schedule.clients_per_round=3", "--set", "data.partition.num_clients=5",
         "--set", "model.hidden=[16]", "--set", "client.epochs=1"]


def invoke(*args):
    result = CliRunner().invoke(app, list(map(str, args)))
    return result, " ".join(result.output.split())


def idx_header(code: int, dims: list[int]) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def mnist_folder(root, train_images: bytes):
    """An MNIST folder whose training images file is ``train_images`` (the rest valid)."""
    root.mkdir()
    (root / "train-images-idx3-ubyte").write_bytes(train_images)
    (root / "train-labels-idx1-ubyte").write_bytes(idx_header(8, [1]) + b"\x00")
    (root / "t10k-images-idx3-ubyte").write_bytes(idx_header(8, [1, 2, 2]) + bytes(4))
    (root / "t10k-labels-idx1-ubyte").write_bytes(idx_header(8, [1]) + b"\x00")
    return root


def npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _cases(tmp_path):
    """(arguments of `fedweave run`, phrases the error must contain), by name."""
    x = np.random.default_rng(0).normal(size=(40, 4))
    y = np.arange(40) % 4
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(bytes(range(128, 256)) * 4)  # not UTF-8
    existing_file = tmp_path / "a-file"
    existing_file.write_text("not a directory")
    return {
        "yaml-binary-garbage": ([garbage], ["garbage.yaml", "not a text file", "UTF-8"]),
        "out-is-a-file": (["--out", existing_file], ["a-file", "exists and is a file", "must be a directory"]),
        "out-inside-a-file": (["--out", existing_file / "run"], ["is a file, not a directory"]),
        "lr-infinite": (["--set", "client.lr=.inf"], ["client.lr", "finite number", "inf"]),
        "lr-nan": (["--set", "client.lr=.nan"], ["client.lr", "finite number"]),
        "rounds-true": (["--set", "schedule.rounds=true"], ["schedule.rounds", "an integer >= 1", "not a boolean"]),
        "epochs-false": (["--set", "client.epochs=false"], ["client.epochs", "not a boolean"]),
        "role-pattern-matches-nothing": (["--set", "model.roles={'fc9.*': personal}"],
                                         ["model.roles", "'fc9.*'", "match no parameter", "1.weight"]),
        "idx-header-overflow": (["--set", "data.dataset=mnist", "--set",
                                 f"data.root={mnist_folder(tmp_path / 'mnist', idx_header(8, [2**31, 2**31, 4]))}"],
                                ["train-images-idx3-ubyte", "declares shape (2147483648, 2147483648, 4)",
                                 "download it again"]),
        "npz-label-2**40": (["--set", "data.dataset=npz", "--set",
                             f"data.root={npz(tmp_path / 'big.npz', x=x, y=np.where(y == 3, 2**40, y))}"],
                            [f"label {2**40}", f"0..{MAX_CLASSES - 1}", "Re-encode"]),
        "npz-test-label-not-trained": (["--set", "data.dataset=npz", "--set",
                                        f"data.root={npz(tmp_path / 't.npz', x=x, y=y, x_test=x[:3], y_test=np.array([0, 1, 7]))}"],
                                       ["'y_test' contains label 7", "training labels 'y' are 0..3"]),
        "npz-complex-inputs": (["--set", "data.dataset=npz", "--set",
                                f"data.root={npz(tmp_path / 'c.npz', x=x * (1 + 1j), y=y)}"],
                               ["'x' must hold real numbers", "complex"]),
    }


CASES = ["yaml-binary-garbage", "out-is-a-file", "out-inside-a-file", "lr-infinite", "lr-nan", "rounds-true",
         "epochs-false", "role-pattern-matches-nothing", "idx-header-overflow", "npz-label-2**40",
         "npz-test-label-not-trained", "npz-complex-inputs"]


@pytest.mark.parametrize("case", CASES)
def test_run_refuses_bad_input_with_exit_2_one_paragraph_and_no_run_dir(tmp_path, monkeypatch, case):
    args, needles = _cases(tmp_path)[case]
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = [] if "--out" in args else ["--out", tmp_path / "run"]
    result, text = invoke("run", "--quiet", *out, *SMALL, *args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and text.startswith("error:"), result.output
    for needle in needles:
        assert needle in text, (needle, text)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no run directory (nor runs/)


@pytest.mark.parametrize("name", ["a/b", "../escaped", "..", "x\\y"])
def test_a_run_name_cannot_leave_runs(tmp_path, monkeypatch, name):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result, text = invoke("run", "--quiet", "--set", f"name={name}", *SMALL)
    assert result.exit_code == 2, result.output
    assert "name" in text and "runs/<name>-<time>" in text and "'/'" in text
    assert list(tmp_path.rglob("*")) == [work]  # nothing written, inside runs/ or beside it


def test_booleans_are_refused_where_numbers_are_expected_but_kept_where_booleans_are():
    for key in ("schedule.rounds", "schedule.clients_per_round", "seed", "client.lr", "schedule.deadline_s",
                "method.server_lr"):
        with pytest.raises(ConfigError, match="not a boolean"):
            load_config(None, [f"{key}=true"])
    with pytest.raises(ConfigError, match="model.hidden.*not a boolean"):
        load_config(None, ["model.hidden=[true, 8]"])
    assert load_config(None, ["eval.per_client=true"]).eval.per_client is True
    assert load_config(None, ["schedule.rounds=7"]).schedule.rounds == 7
    assert load_config(None, ["schedule.deadline_s=2"]).schedule.deadline_s == 2.0


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_numbers_are_refused_in_every_section(value):
    for key in ("client.lr", "system.latency_s", "eval.target", "method.server_lr", "data.partition.alpha"):
        with pytest.raises(ConfigError, match="finite number"):
            load_config(None, [f"{key}={value}"])


def test_idx_header_with_an_overflowing_size_is_a_data_error(tmp_path):
    # 2**31 * 2**31 * 4 bytes = 2**64: an int64 product wraps to 0 and matched an empty body
    path = tmp_path / "images"
    path.write_bytes(idx_header(8, [2**31, 2**31, 4]))
    from fedweave.data.sources import read_idx

    with pytest.raises(DataError, match=r"truncated: its header declares shape \(2147483648, 2147483648, 4\) "
                                        rf"\({2**64} data bytes\) but the file holds 0"):
        read_idx(path, ndim=3)


def test_npz_label_bound_and_test_labels_within_training_classes(tmp_path):
    assert getattr(sources, "MAX_CLASSES", None) == MAX_CLASSES
    x = np.zeros((4, 2))
    ok = load_source("npz", root=str(npz(tmp_path / "ok.npz", x=x, y=np.array([0, 1, 2, MAX_CLASSES - 1]))))
    assert ok.num_classes == MAX_CLASSES
    with pytest.raises(DataError, match=f"label {MAX_CLASSES};"):
        load_source("npz", root=str(npz(tmp_path / "big.npz", x=x, y=np.array([0, 1, 2, MAX_CLASSES]))))
    same = load_source("npz", root=str(npz(tmp_path / "s.npz", x=x, y=np.array([0, 1, 2, 3]),
                                           x_test=x[:2], y_test=np.array([3, 0]))))
    assert same.num_classes == 4 and same.y_test.tolist() == [3, 0]
    with pytest.raises(DataError, match="a class that no client can learn"):
        load_source("npz", root=str(npz(tmp_path / "t.npz", x=x, y=np.array([0, 1, 2, 3]), x_test=x[:1],
                                        y_test=np.array([4]))))
    # client ids are not labels: a large id is fine
    ids = load_source("npz", root=str(npz(tmp_path / "c.npz", x=x, y=np.array([0, 1, 0, 1]),
                                          client_id=np.array([0, 0, 2**40, 2**40]))))
    assert ids.client_ids.tolist() == [0, 0, 2**40, 2**40]


@pytest.mark.parametrize("key", ["x", "x_test"])
def test_complex_inputs_are_refused_not_silently_made_real(tmp_path, key):
    x = np.ones((4, 2))
    arrays = dict(x=x, y=np.array([0, 1, 0, 1]), x_test=x[:2], y_test=np.array([0, 1]))
    arrays[key] = arrays[key] * (1 + 2j)
    with pytest.raises(DataError, match=f"'{key}' must hold real numbers.*complex128"):
        load_source("npz", root=str(npz(tmp_path / "c.npz", **arrays)))
