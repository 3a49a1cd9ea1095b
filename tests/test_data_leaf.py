"""The ``leaf`` source: LEAF JSON files written here in LEAF's layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedweave.cli import app
from fedweave.config import load_config
from fedweave.data import load_source
from fedweave.data.federated import build_federated
from fedweave.data.leaf import ALL_LETTERS, SENT140_DIM, hashed_bag_of_words
from fedweave.errors import ConfigError, DataError


def write_leaf(folder, users: dict[str, tuple[list, list]], name: str = "all_data_0_niid_0_keep_0.json"):
    """One LEAF JSON file holding ``users`` ({user: (x, y)})."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "users": list(users),
        "num_samples": [len(x) for x, _ in users.values()],
        "user_data": {u: {"x": x, "y": y} for u, (x, y) in users.items()},
    }
    (folder / name).write_text(json.dumps(doc))
    return folder / name


def femnist_users(rng, counts: dict[str, int]) -> dict[str, tuple[list, list]]:
    return {u: (rng.random((n, 784)).round(3).tolist(), rng.integers(0, 62, n).tolist()) for u, n in counts.items()}


@pytest.fixture
def femnist(tmp_path):
    rng = np.random.default_rng(0)
    write_leaf(tmp_path / "train", femnist_users(rng, {"f0001_41": 6, "f0002_12": 4}), "all_data_0_train_9.json")
    write_leaf(tmp_path / "train", femnist_users(rng, {"f0003_07": 5}), "all_data_1_train_9.json")
    write_leaf(tmp_path / "test", femnist_users(rng, {"f0001_41": 2, "f0003_07": 1}), "all_data_0_test_9.json")
    return tmp_path


def test_femnist_layout_and_natural_clients(femnist):
    src = load_source("leaf", root=str(femnist))
    assert src.name == "leaf/femnist"
    assert src.input_shape == (1, 28, 28) and src.num_classes == 62
    assert tuple(src.x_train.shape) == (15, 1, 28, 28) and tuple(src.x_test.shape) == (3, 1, 28, 28)
    # users numbered in file order, then in each file's users order
    assert src.client_ids.tolist() == [0] * 6 + [1] * 4 + [2] * 5
    doc = json.loads((femnist / "train" / "all_data_0_train_9.json").read_text())
    first = np.asarray(doc["user_data"]["f0001_41"]["x"][0], dtype=np.float32).reshape(1, 28, 28)
    assert np.array_equal(src.x_train[0].numpy(), first)
    assert src.y_train[:6].tolist() == doc["user_data"]["f0001_41"]["y"]

    cfg = load_config({"data": {"dataset": "leaf", "root": str(femnist), "partition": {"kind": "natural"},
                               "client_val_fraction": 0.0}})
    data = build_federated(cfg.data)
    assert data.num_clients == 3
    assert sorted(len(t) for t in data.client_train) == [4, 5, 6]


def test_data_folder_parent_and_unsplit_folder(tmp_path):
    rng = np.random.default_rng(1)
    write_leaf(tmp_path / "femnist" / "data" / "train", femnist_users(rng, {"a": 3}))
    assert load_source("leaf", root=str(tmp_path / "femnist")).num_classes == 62
    write_leaf(tmp_path / "all_data", femnist_users(rng, {"a": 3, "b": 2}))
    src = load_source("leaf", root=str(tmp_path / "all_data"))
    assert src.x_test is None and src.client_ids.tolist() == [0, 0, 0, 1, 1]


def test_shakespeare_uses_the_leaf_vocabulary(tmp_path):
    assert len(ALL_LETTERS) == 80 and len(set(ALL_LETTERS)) == 80
    line = "To be, or not to be: that is the question. Whether 'tis nobler in the mind to suf"[:80]
    assert len(line) == 80
    users = {"THE_TRAGEDY_HAMLET": ([line, line[1:] + "f"], ["f", "e"]), "KING_LEAR": ([line], ["!"])}
    write_leaf(tmp_path / "train", users)
    src = load_source("leaf", root=str(tmp_path))
    assert src.name == "leaf/shakespeare" and src.num_classes == 80 and src.input_shape == (80,)
    assert src.x_train[0, :2].tolist() == [ALL_LETTERS.index("T"), ALL_LETTERS.index("o")]
    assert src.y_train.tolist() == [ALL_LETTERS.index(c) for c in "fe!"]
    assert src.client_ids.tolist() == [0, 0, 1]


def test_sent140_hashed_bag_of_words(tmp_path):
    rec = ["1467810369", "Mon Apr 06 22:19:45 PDT 2009", "NO_QUERY", "user_a"]
    users = {"user_a": ([rec + ["I love it, love it!"], rec + ["so sad today"]], [1, 0]),
             "user_b": ([rec + ["Love"]], [1])}
    write_leaf(tmp_path / "train", users)
    src = load_source("leaf", root=str(tmp_path))
    assert src.name == "leaf/sent140" and src.num_classes == 2 and src.input_shape == (SENT140_DIM,)
    assert float(src.x_train[0].sum()) == 5.0  # i, love, it, love, it
    assert np.array_equal(src.x_train[2].numpy(), hashed_bag_of_words("love"))
    assert float(src.x_train[0].max()) == 2.0
    assert src.y_train.tolist() == [1, 0, 1]


def test_synthetic_numeric_features_and_explicit_name(tmp_path):
    users = {"f_00000": ([[0.5, 1.0, -2.0]] * 4, [0, 1, 2, 1]), "f_00001": ([[1.0, 0.0, 0.0]], [4])}
    write_leaf(tmp_path / "train", users)
    src = load_source("leaf", root=str(tmp_path), data_name="synthetic")
    assert src.input_shape == (3,) and src.num_classes == 5
    cfg = load_config({"data": {"dataset": "leaf", "root": str(tmp_path), "name": "synthetic"}})
    assert cfg.data.name == "synthetic"


# -- bad input ---------------------------------------------------------------------------------


def test_missing_or_empty_folders(tmp_path):
    with pytest.raises(DataError, match="data.root must be set"):
        load_source("leaf")
    with pytest.raises(DataError, match="does not exist"):
        load_source("leaf", root=str(tmp_path / "nope"))
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="holds no .json files"):
        load_source("leaf", root=str(tmp_path))
    write_leaf(tmp_path / "train", femnist_users(np.random.default_rng(0), {"a": 2}))
    (tmp_path / "test").mkdir()
    with pytest.raises(DataError, match="test folder .* holds no .json"):
        load_source("leaf", root=str(tmp_path))


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda d: d.pop("user_data"), "lacks 'user_data'"),
        (lambda d: d["num_samples"].append(3), "lists 2 users but 3 num_samples"),
        (lambda d: d["num_samples"].__setitem__(0, 9), "num_samples says user 'a' has 9"),
        (lambda d: d["user_data"]["a"]["y"].pop(), "has 2 inputs but 1 labels"),
        (lambda d: d["user_data"].pop("b"), "user 'b' is listed in 'users' but has no user_data"),
        (lambda d: d["user_data"].__setitem__("zz", {"x": [], "y": []}), "not listed in 'users'"),
        (lambda d: d["user_data"]["a"]["x"].__setitem__(0, [0.1] * 10), "have 784 values"),
    ],
)
def test_inconsistent_files_are_named(tmp_path, mutate, needle):
    rng = np.random.default_rng(0)
    users = femnist_users(rng, {"a": 2, "b": 1})
    path = write_leaf(tmp_path / "train", users)
    doc = json.loads(path.read_text())
    mutate(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=needle) as err:
        load_source("leaf", root=str(tmp_path), data_name="femnist")
    assert str(path) in str(err.value) or "784" in str(err.value)


def test_broken_json_duplicate_users_and_bad_names(tmp_path):
    rng = np.random.default_rng(0)
    write_leaf(tmp_path / "train", femnist_users(rng, {"a": 2}), "one.json")
    write_leaf(tmp_path / "train", femnist_users(rng, {"a": 1}), "two.json")
    with pytest.raises(DataError, match="appears in both"):
        load_source("leaf", root=str(tmp_path))
    (tmp_path / "train" / "two.json").write_text('{"users": ["a"], "num_')
    with pytest.raises(DataError, match="not valid JSON"):
        load_source("leaf", root=str(tmp_path))
    (tmp_path / "train" / "two.json").unlink()
    with pytest.raises(ConfigError, match="femnist, shakespeare, sent140, synthetic"):
        load_source("leaf", root=str(tmp_path), data_name="celeba")
    write_leaf(tmp_path / "sh" / "train", {"u": (["ab\u00e9"], ["a"])})
    with pytest.raises(DataError, match="not in LEAF's 80-character"):
        load_source("leaf", root=str(tmp_path / "sh"))


def test_command_line_exit_2_names_the_problem(tmp_path):
    (tmp_path / "train").mkdir()
    result = CliRunner().invoke(app, ["partition", "--set", "data.dataset=leaf", "--set", f"data.root={tmp_path}"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "holds no .json files" in text and "Traceback" not in text
