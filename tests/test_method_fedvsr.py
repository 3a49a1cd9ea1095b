"""FedVSR: loss-aware weights against hand values, the Haar DWT loss against a direct
computation, the restoration task (PSNR) and a 2-round ``fedweave run`` that writes psnr."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

import fedweave
from fedweave.cli import app
from fedweave.data.sources import load_source
from fedweave.methods.fedvsr import haar_dwt2d, high_frequency_loss, loss_aware_weights
from fedweave.restoration import RestorationTask, psnr


def hand_weights(losses, t, total, thr=0.05):
    e = 1 - t / total
    inv = [(1 / v) ** e for v in losses]
    p = [v / sum(inv) for v in inv]
    u = 1 / len(losses)
    h = math.sqrt(0.5 * sum((math.sqrt(u) - math.sqrt(pk)) ** 2 for pk in p))
    c = 0.0 if h < thr else (h - thr) / (1 - thr)
    return [(1 - c) * u + c * pk for pk in p], h


@pytest.mark.parametrize("t", [0, 5, 9])
def test_loss_aware_weights_match_hand_values(t):
    losses = [0.5, 1.0, 2.0]
    expected, h = hand_weights(losses, t, 10)
    out = loss_aware_weights(torch.tensor(losses), t, 10)
    assert out.tolist() == pytest.approx(expected, abs=1e-12)
    assert float(out.sum()) == pytest.approx(1.0)
    if t == 9:  # e = 0.1 flattens p: Hellinger 0.02 < 0.05, the weights are uniform again
        assert h < 0.05 and out.tolist() == pytest.approx([1 / 3] * 3, abs=1e-15)
    else:
        assert h > 0.05 and out[0] > out[1] > out[2]  # the lowest loss gets the largest weight


def test_first_round_by_hand():
    # t = 0: e = 1, p = (2, 1, 0.5) / 3.5
    p = [4 / 7, 2 / 7, 1 / 7]
    h = math.sqrt(0.5 * sum((math.sqrt(1 / 3) - math.sqrt(v)) ** 2 for v in p))
    c = (h - 0.05) / 0.95
    expected = [(1 - c) / 3 + c * v for v in p]
    assert loss_aware_weights(torch.tensor([0.5, 1.0, 2.0]), 0, 10).tolist() == pytest.approx(expected, abs=1e-12)


def test_close_losses_stay_uniform_below_the_hellinger_threshold():
    out = loss_aware_weights(torch.tensor([1.0, 1.01, 0.99]), 0, 10)
    assert out.tolist() == pytest.approx([1 / 3] * 3, abs=1e-15)


def _direct_haar(x):
    """LL, LH, HL, HH of a [H, W] list-of-lists by explicit 2x2 blocks."""
    h, w = len(x), len(x[0])
    bands = [[[0.0] * (w // 2) for _ in range(h // 2)] for _ in range(4)]
    for i in range(h // 2):
        for j in range(w // 2):
            a, b, c, d = x[2 * i][2 * j], x[2 * i][2 * j + 1], x[2 * i + 1][2 * j], x[2 * i + 1][2 * j + 1]
            for k, v in enumerate(((a + b + c + d) / 2, (a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2)):
                bands[k][i][j] = v
    return bands


def test_haar_dwt_matches_direct_computation_and_is_orthonormal():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 6, 4, dtype=torch.float64)
    bands = haar_dwt2d(x)
    direct = _direct_haar(x[1, 2].tolist())
    for got, want in zip(bands, direct):
        assert got[1, 2].flatten().tolist() == pytest.approx(sum(want, []), abs=1e-12)
    energy = sum(float((b**2).sum()) for b in bands)
    assert energy == pytest.approx(float((x**2).sum()), rel=1e-12)  # Parseval


def test_odd_sides_are_zero_padded():
    x = torch.rand(1, 1, 3, 5, dtype=torch.float64)
    padded = torch.zeros(1, 1, 4, 6, dtype=torch.float64)
    padded[..., :3, :5] = x
    for a, b in zip(haar_dwt2d(x), haar_dwt2d(padded)):
        assert torch.equal(a, b)


def test_high_frequency_loss_is_the_charbonnier_mean_over_lh_hl_hh():
    torch.manual_seed(1)
    out, target = torch.rand(2, 1, 4, 4, dtype=torch.float64), torch.rand(2, 1, 4, 4, dtype=torch.float64)
    vals = []
    for n in range(2):
        bo, bt = _direct_haar(out[n, 0].tolist()), _direct_haar(target[n, 0].tolist())
        for k in (1, 2, 3):
            for i in range(2):
                for j in range(2):
                    vals.append(math.sqrt((bo[k][i][j] - bt[k][i][j]) ** 2 + 1e-9))
    assert float(high_frequency_loss(out, target)) == pytest.approx(sum(vals) / len(vals), rel=1e-12)
    # the low-frequency band is not penalised: a constant offset costs (almost) nothing
    assert float(high_frequency_loss(target + 0.3, target)) == pytest.approx(math.sqrt(1e-9), rel=1e-6)


def test_restoration_task_psnr_and_sums():
    task = RestorationTask()
    target = torch.full((2, 1, 2, 2), 0.5)
    output = target.clone()
    output[0] += 0.1  # MSE 0.01 -> 20 dB
    output[1, 0, 0, 0] = 1.7  # clamped to 1: MSE 0.25 / 4 -> 10 log10(16) dB
    assert psnr(output, target).tolist() == pytest.approx([20.0, 10 * math.log10(16)], rel=1e-5)
    sums = task.metric_sums(output, target)
    assert set(sums) == {"loss", "psnr"} and sums["psnr"] == pytest.approx(20.0 + 10 * math.log10(16), rel=1e-5)
    assert task.higher_is_better and task.metric_name == "psnr"
    with pytest.raises(fedweave.ModelError, match="srnet"):
        task.loss(torch.zeros(2, 10), target)


def test_super_resolution_source_keeps_labels_for_partitions():
    src = load_source("sr2:digits")
    base = load_source("digits")
    assert src.x_train.shape == src.y_train.shape == base.x_train.shape
    assert torch.equal(src.y_train, base.x_train) and (src.labels == base.y_train.numpy()).all()
    assert not torch.equal(src.x_train, src.y_train)
    with pytest.raises(fedweave.DataError, match="divisible by 3"):
        load_source("sr3:digits")


def test_fedvsr_needs_image_outputs(tiny):
    with pytest.raises(fedweave.ConfigError, match="restoration"):
        fedweave.run(tiny({"method": {"name": "fedvsr"}}), out="/nonexistent/never")


def test_two_round_restoration_run_writes_psnr(tmp_path):
    out = tmp_path / "sr"
    args = ["run", "--quiet", "--out", str(out)]
    for kv in ("task.kind=restoration", "data.dataset=sr2:digits", "data.partition.num_clients=4", "model.name=srnet",
               "model.width=8", "method.name=fedvsr", "schedule.rounds=2", "schedule.clients_per_round=3",
               "client.epochs=1", "client.optimizer=adam", "client.lr=0.01", "eval.per_client=true"):
        args += ["--set", kv]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(math.isfinite(r["psnr"]) and r["psnr"] > 5 for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric_name"] == "psnr" and summary["higher_is_better"] is True


def test_restoration_with_a_classifier_or_class_labels_is_refused_before_the_run(tmp_path):
    for cfg in ({"task": {"kind": "restoration"}, "data": {"dataset": "sr2:digits"}},
                {"task": {"kind": "restoration"}, "data": {"dataset": "digits"}, "model": {"name": "srnet"}}):
        with pytest.raises(fedweave.ModelError, match="sr2:"):
            fedweave.run(cfg, out=tmp_path / "never")
        assert not (tmp_path / "never").exists()
