"""``fedweave partition --plot FILE.png``: per-client label distribution and sizes."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("matplotlib")

from fedweave.cli import app
from fedweave.data.plots import plot_partition
from fedweave.errors import ConfigError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def invoke(*args):
    result = CliRunner().invoke(app, list(map(str, args)))
    return result, " ".join(result.output.split())


def test_partition_plot_writes_a_png(tmp_path):
    out = tmp_path / "partition.png"
    result, text = invoke("partition", "--plot", out, "--show", "2", "--set", "data.partition.num_clients=6")
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 5000
    assert "plot written to" in text


def test_plot_function_many_classes_and_empty_clients(tmp_path):
    rng = np.random.default_rng(0)
    hists = rng.integers(0, 5, size=(12, 62))
    hists[3] = 0  # an empty client draws no bar, and no division by zero
    path = plot_partition(hists, tmp_path / "femnist.png", title="many classes")
    assert path.read_bytes()[:8] == PNG_MAGIC
    svg = plot_partition(hists[:4, :3], tmp_path / "small.svg")
    assert svg.read_text().lstrip().startswith("<?xml")
    many = plot_partition(rng.integers(0, 5, size=(400, 4)), tmp_path / "users.png")  # drawn as steps
    assert many.read_bytes()[:8] == PNG_MAGIC


def test_plot_bad_paths_exit_2_before_any_work(tmp_path):
    result, text = invoke("partition", "--plot", tmp_path / "missing" / "p.png")
    assert result.exit_code == 2 and "does not exist" in text and "Traceback" not in text
    result, text = invoke("partition", "--plot", tmp_path / "noext")
    assert result.exit_code == 2 and "needs an extension" in text
    with pytest.raises(ConfigError, match="Could not write"):
        plot_partition(np.ones((2, 2)), tmp_path / "p.unknownformat")
    with pytest.raises(ConfigError, match="non-empty"):
        plot_partition(np.zeros((0, 3)), tmp_path / "p.png")
