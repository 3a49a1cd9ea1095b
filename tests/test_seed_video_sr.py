"""The video SR bundle (task ``video_sr``, data ``clips``, model ``vsrnet``) and FedVSR on it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fedweave
from fedweave.config import load_config
from fedweave.errors import ModelError
from fedweave.experiment import build_experiment
from fedweave.tasks.video_sr import (VideoSRTask, build_vsrnet, degrade_frame, luma, make_clips, psnr_y, render_clip,
                                     ssim_y)

VIDEO = {
    "task": {"kind": "video_sr"},
    "data": {"dataset": "clips:3", "partition": {"kind": "iid", "num_clients": 3}},
    "model": {"name": "vsrnet", "width": 4, "kwargs": {"depth": 2}},
    "client": {"epochs": 1, "batch_size": 32, "lr": 0.002, "optimizer": "adam"},
    "schedule": {"rounds": 2, "clients_per_round": 3},
}


def test_clips_are_deterministic_and_windows_share_their_targets():
    x5, y5, l5 = make_clips(seed=1, window=5, clips=6)
    x5b, y5b, _ = make_clips(seed=1, window=5, clips=6)
    x1, y1, l1 = make_clips(seed=1, window=1, clips=6)
    assert torch.equal(x5, x5b) and torch.equal(y5, y5b)
    assert x5.shape == (6, 5, 3, 16, 16) and y5.shape == (6, 3, 32, 32) and x1.shape == (6, 1, 3, 16, 16)
    assert torch.equal(y1, y5) and (l1 == l5).all() and torch.equal(x1[:, 0], x5[:, 2])  # same clips, centre frame
    assert not torch.equal(y5, make_clips(seed=2, window=5, clips=6)[1])


def test_clip_has_the_configured_camera_motion_and_degradation():
    rng = np.random.default_rng(0)
    digit = np.zeros((8, 8))  # no sprite: the frames are the panned background alone
    hr, lr, (vy, vx) = render_clip(rng, digit, 5)
    assert (vy, vx) != (0, 0)
    # frame t+1 is frame t shifted by the camera velocity (where both are inside the frame)
    a, b = hr[2], hr[3]
    ys, xs = slice(max(vy, 0), 32 + min(vy, 0)), slice(max(vx, 0), 32 + min(vx, 0))
    yd, xd = slice(max(-vy, 0), 32 + min(-vy, 0)), slice(max(-vx, 0), 32 + min(-vx, 0))
    assert np.allclose(b[:, yd, xd], a[:, ys, xs])
    # degradation: a 5x5 Gaussian of sigma 0.8 then every second pixel; a constant frame stays constant
    flat = np.full((3, 32, 32), 0.25)
    assert np.allclose(degrade_frame(flat), np.full((3, 16, 16), 0.25))
    assert lr.shape == (5, 3, 16, 16)
    g = np.exp(-np.arange(-2, 3) ** 2 / (2 * 0.8**2))
    k = np.outer(g, g) / g.sum() ** 2
    expected = (k * hr[0, 1, 2:7, 4:9]).sum()  # LR pixel (2, 3) = blurred HR pixel (4, 6), away from borders
    assert lr[0, 1, 2, 3] == pytest.approx(expected)


def test_psnr_and_ssim_on_y_by_hand():
    target = torch.full((1, 3, 32, 32), 0.5)
    output = target + 0.1
    # grey pixels: Y = (16 + 219 v) / 255, so a shift of 0.1 on every channel is 0.1 * 219 / 255 on Y
    assert float(psnr_y(output, target)) == pytest.approx(-10 * math.log10((0.1 * 219 / 255) ** 2))
    assert float(luma(target)[0, 0, 0, 0]) == pytest.approx((16 + 219 * 0.5) / 255)
    # constant frames: SSIM = (2ab + C1) / (a^2 + b^2 + C1) (no variance: the structure term is 1)
    a, b = (16 + 219 * 0.6) / 255, (16 + 219 * 0.5) / 255
    assert float(ssim_y(output, target)) == pytest.approx((2 * a * b + 1e-4) / (a * a + b * b + 1e-4))
    noisy = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim_y(noisy, noisy), torch.ones(2, dtype=torch.float64))


def test_vsrnet_starts_at_bicubic_and_backpropagates_to_every_frame():
    torch.manual_seed(0)
    model = build_vsrnet((3, 3, 16, 16), width=4, depth=2)
    x = torch.rand(2, 3, 3, 16, 16, requires_grad=True)
    out = model(x)
    bicubic = torch.nn.functional.interpolate(x[:, 1], scale_factor=2, mode="bicubic", align_corners=False)
    assert out.shape == (2, 3, 32, 32) and torch.equal(out, bicubic)
    torch.nn.init.normal_(model.up.weight, std=0.1)
    model(x).square().sum().backward()
    assert all(float(x.grad[:, t].abs().sum()) > 0 for t in range(3))  # neighbouring frames reach the output
    assert float(model.embed.weight.grad.abs().sum()) > 0


def test_video_model_on_single_images_is_refused():
    with pytest.raises(ModelError, match="video model"):
        build_vsrnet((3, 32, 32))


# both video models: the sliding window and the recurrent one (tasks/video_sr_recurrent.py)
VIDEO_MODELS = {"vsrnet": VIDEO["model"], "vsrrnn": {"name": "vsrrnn", "width": 4, "kwargs": {"blocks": 1}}}


@pytest.mark.parametrize("model", list(VIDEO_MODELS))
def test_fedvsr_runs_end_to_end_on_video_and_beats_bicubic(tiny, tmp_path, model):
    cfg = tiny({**VIDEO, "model": VIDEO_MODELS[model], "method": {"name": "fedvsr"}})
    result = fedweave.run(cfg, out=tmp_path / "fedvsr")
    assert result.status == "completed"
    exp = build_experiment(load_config(cfg))
    bicubic = VideoSRTask().evaluate(exp.model_factory(), exp.data.x_test, exp.data.y_test)  # the untrained model
    last = result.history[-1]
    assert last["psnr_y"] > bicubic["psnr_y"] and 0 < last["ssim_y"] <= 1
    assert set(last) >= {"psnr_y", "ssim_y", "loss"}


@pytest.mark.parametrize("model", list(VIDEO_MODELS))
def test_cli_refuses_a_video_model_on_single_images_with_exit_2(tmp_path, model):
    from helpers_runs import assert_run_refused

    assert_run_refused(tmp_path / "x", ["--set", "task.kind=restoration", "--set", "data.dataset=sr2:digits",
                                        "--set", f"model.name={model}", "--set", "schedule.rounds=1"],
                       ["video model", model, "srnet"])
