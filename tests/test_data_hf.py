"""The ``hf`` source: small Hugging Face datasets built and saved here, read offline."""

from __future__ import annotations

import glob
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

from typer.testing import CliRunner

from fedweave.cli import app
from fedweave.config import load_config
from fedweave.data import load_source
from fedweave.data.federated import build_federated
from fedweave.errors import DataError


def grey_images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(n)]


@pytest.fixture
def image_dict(tmp_path) -> Path:
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c", "d"])})
    train = datasets.Dataset.from_dict({"image": grey_images(12), "label": [i % 3 for i in range(12)]}, features=feats)
    test = datasets.Dataset.from_dict({"image": grey_images(4, 1), "label": [0, 1, 2, 3]}, features=feats)
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(folder))
    return folder


def test_save_to_disk_images_and_classlabel(image_dict):
    src = load_source("hf", root=str(image_dict))
    assert src.input_shape == (1, 8, 8) and src.num_classes == 4  # from the ClassLabel, not max + 1
    assert tuple(src.x_train.shape) == (12, 1, 8, 8) and tuple(src.x_test.shape) == (4, 1, 8, 8)
    assert np.allclose(src.x_train[0, 0].numpy(), grey_images(12)[0] / 255.0)
    assert src.y_train.tolist() == [i % 3 for i in range(12)] and src.y_test.tolist() == [0, 1, 2, 3]
    assert src.client_ids is None


def test_rgb_arrays_string_labels_and_columns(tmp_path):
    rng = np.random.default_rng(0)
    rgb = [rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(6)]
    ds = datasets.Dataset.from_dict({"pixels": rgb, "target": ["cat", "dog", "cat", "emu", "dog", "cat"],
                                     "writer": ["w2", "w1", "w2", "w3", "w1", "w2"]})
    ds.save_to_disk(str(tmp_path / "one"))
    cols = {"x": "pixels", "y": "target", "client": "writer"}
    src = load_source("hf", root=str(tmp_path / "one"), columns=cols)
    assert src.input_shape == (3, 6, 5) and src.num_classes == 3
    assert np.allclose(src.x_train[0].numpy(), rgb[0].transpose(2, 0, 1) / 255.0)
    assert src.y_train.tolist() == [0, 1, 0, 2, 1, 0]  # sorted names: cat, dog, emu
    assert src.client_ids.tolist() == [1, 0, 1, 2, 0, 1]
    cfg = load_config({"data": {"dataset": "hf", "root": str(tmp_path / "one"), "columns": cols,
                                "partition": {"kind": "natural"}, "test_fraction": 0.3, "client_val_fraction": 0.0}})
    assert build_federated(cfg.data).num_clients <= 3


def test_numeric_features_and_split_choice(tmp_path):
    feats = {"features": [[float(i), 1.0, 2.0] for i in range(5)], "label": [0, 1, 0, 1, 2]}
    dd = datasets.DatasetDict({"fit": datasets.Dataset.from_dict(feats),
                               "holdout": datasets.Dataset.from_dict(feats)})
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match="none is called 'train'; set data.split"):
        load_source("hf", root=str(tmp_path / "dd"))
    src = load_source("hf", root=str(tmp_path / "dd"), split="fit")
    assert src.input_shape == (3,) and src.num_classes == 3 and src.x_test is None
    with pytest.raises(DataError, match="no split 'train'.*fit, holdout"):
        load_source("hf", root=str(tmp_path / "dd"), split="train")


def _fake_hub_cache(cache: Path, tmp_path: Path) -> None:
    """Put a dataset into ``cache`` where ``load_dataset('fedweave/tiny')`` finds it offline."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"x": [float(i), 1.0], "label": i % 2}) + "\n" for i in range(6)))
    scratch = tmp_path / "scratch"
    builder = datasets.load_dataset_builder("json", data_files={"train": str(rows)}, cache_dir=str(scratch))
    builder.download_and_prepare()
    built = Path(glob.glob(str(scratch / "json" / "*" / "*" / "*" / "dataset_info.json"))[0]).parent
    target = cache / "fedweave___tiny" / "default" / "0.0.0" / built.name
    shutil.copytree(built, target)
    for arrow in target.glob("json-*.arrow"):  # the hub cache names files <dataset>-<split>.arrow
        arrow.rename(target / arrow.name.replace("json-", "tiny-", 1))


def test_named_dataset_from_the_local_cache_offline(tmp_path):
    cache = tmp_path / "cache"
    _fake_hub_cache(cache, tmp_path)
    before = datasets.config.HF_HUB_OFFLINE
    src = load_source("hf", root=str(cache), data_name="fedweave/tiny")
    assert src.input_shape == (2,) and src.num_classes == 2 and len(src.y_train) == 6
    assert src.name == "hf/fedweave/tiny"
    assert datasets.config.HF_HUB_OFFLINE == before  # offline mode is switched on for the call only


def test_not_cached_says_how_to_fix(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        load_source("hf", root=str(tmp_path / "empty"), data_name="fedweave/not-there")
    msg = str(err.value)
    assert "'fedweave/not-there' is not in" in msg and "never downloads" in msg and "save_to_disk" in msg


def test_bad_inputs(tmp_path, image_dict):
    with pytest.raises(DataError, match="neither data.root nor data.name"):
        load_source("hf")
    with pytest.raises(DataError, match="does not exist"):
        load_source("hf", root=str(tmp_path / "missing"))
    with pytest.raises(DataError, match="data.columns.y='nope' is not a column"):
        load_source("hf", root=str(image_dict), columns={"y": "nope"})
    datasets.Dataset.from_dict({"text": ["hi", "there"], "label": [0, 1]}).save_to_disk(str(tmp_path / "txt"))
    with pytest.raises(DataError, match="holds text"):
        load_source("hf", root=str(tmp_path / "txt"))


def test_command_line_exit_2_when_not_cached(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["partition", "--set", "data.dataset=hf", "--set", "data.name=fedweave/nope",
                                      "--set", f"data.root={tmp_path / 'empty'}"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "never downloads" in text and "Traceback" not in text
