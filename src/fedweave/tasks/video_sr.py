"""Video super-resolution: the ``video_sr`` task, the ``clips`` data and the ``vsrnet`` model.

Task (``task.kind: video_sr``)
    The model sees a window of low-resolution frames and returns the high-resolution centre
    frame (sliding-window VSR). Loss: the Charbonnier loss of :mod:`~fedweave.tasks.restoration`
    (mean of √((ŷ − y)² + 1e-6)). Metrics, as VSR papers (and FedVSR) report them, on the Y
    channel of ITU-R BT.601 YCbCr, Y = (16 + 65.481 R + 128.553 G + 24.966 B)/255 for RGB
    in [0, 1] (a single-channel frame is taken as its own Y):

    * ``psnr_y`` (primary; dB, higher is better): 10·log10(1 / MSE(Y(clamp(ŷ, 0, 1)), Y(y))),
      MSE floored at 1e-10, per frame, averaged;
    * ``ssim_y``: SSIM of Wang, Bovik, Sheikh & Simoncelli (2004) on Y with an 11×11
      Gaussian window (σ = 1.5), C1 = (0.01)², C2 = (0.03)² (data range 1), averaged over
      the valid positions of the window (no padding), per frame, averaged.

    No border is cropped (the frames are small). LPIPS needs pretrained network weights,
    which cannot be fetched here, so it is not reported.

Data (``data.dataset: clips`` or ``clips:<window>``, window odd, default 5)
    Made offline and deterministically from ``data.seed``: 600 clips of 32×32 RGB frames.
    Each clip is a textured background (three coloured sinusoidal gratings with random
    orientation, 1–6 cycles per 32 px and phase) seen by a camera that pans at an integer
    velocity of −2…2 pixels per frame on each axis (never still), with one handwritten
    digit (sklearn's 8×8 ``digits``, enlarged ×2 to 16×16 and alpha-blended in its own
    colour) moving at its own integer velocity. Degradation (the "BD" model of VSR
    benchmarks): Gaussian blur σ = 0.8 (5×5 kernel, reflected borders) then ×2
    decimation, so the LR frames are 16×16. An example is ``x = [window, 3, 16, 16]`` (the LR
    frames centred on frame c) and ``y = [3, 32, 32]`` (the HR frame c). Because the pan
    shifts the scene by whole HR pixels, neighbouring LR frames sample it at other phases —
    the sub-pixel information a video model can use and a single-image model cannot.
    ``clips:1`` is the single-image control on the *same* clips: the same targets and
    degradation, the centre LR frame only. The digit class is the label used for
    stratified splits and label-skewed partitions.

Model (``model.name: vsrnet``)
    A small sliding-window VSR network: a per-frame 3×3 convolution (shared weights,
    ``model.width`` channels), a 3×3 fusion convolution over the concatenated frames,
    ``depth − 1`` further 3×3 convolutions (ReLU), a 3×3 convolution to 4·C channels and a
    ×2 pixel shuffle, added to the bicubic upsampling of the centre LR frame. The last
    convolution starts at zero, so the untrained model returns the bicubic baseline. No
    optical flow (no pretrained flow network here); the convolutions' receptive field
    covers the motion of a 5-frame window.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import DataError, ModelError
from ..core.rng import derive_seed
from ..core.task import Task
from ..data.sources import DataSource, SourceOptions, load_source, register_source
from ..models import register_model
from .registry import register_task
from .restoration import MSE_FLOOR, charbonnier

HR = 32
SCALE = 2
CLIPS = 600
BLUR_SIGMA = 0.8
SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2


# -- metrics --------------------------------------------------------------------------------


def luma(images: torch.Tensor) -> torch.Tensor:
    """BT.601 Y ``[B, 1, H, W]`` of RGB ``[B, 3, H, W]`` in [0, 1] (one channel: itself)."""
    if images.shape[1] == 1:
        return images
    r, g, b = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    return (16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def psnr_y(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR (dB) on Y of ``output`` clamped to [0, 1], float64 ``[B]``."""
    diff = luma(output.detach().clamp(0.0, 1.0).to(torch.float64)) - luma(target.to(torch.float64))
    return -10.0 * torch.log10((diff * diff).flatten(1).mean(dim=1).clamp_min(MSE_FLOOR))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim_y(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-frame SSIM on Y (11×11 Gaussian window, σ 1.5, valid positions), float64 ``[B]``."""
    x = luma(output.detach().clamp(0.0, 1.0).to(torch.float64))
    y = luma(target.to(torch.float64))
    w = _gaussian_window()
    mx, my = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mx * mx
    syy = F.conv2d(y * y, w) - my * my
    sxy = F.conv2d(x * y, w) - mx * my
    ssim = ((2 * mx * my + SSIM_C1) * (2 * sxy + SSIM_C2)) / ((mx * mx + my * my + SSIM_C1) * (sxx + syy + SSIM_C2))
    return ssim.flatten(1).mean(dim=1)


def _check_frame(output: torch.Tensor, target: torch.Tensor) -> None:
    if output.shape != target.shape or output.dim() != 4:
        raise ModelError(
            f"The video_sr task compares the model's output frame [batch, channels, height, width] with the "
            f"high-resolution centre frame, but the output has shape {tuple(output.shape)} and the target "
            f"{tuple(target.shape)}. Use a video model (model.name: vsrnet or vsrrnn) on video data "
            "(data.dataset: clips)."
        )


class VideoSRTask(Task):
    """Charbonnier loss on the centre frame; PSNR and SSIM on Y."""

    def __init__(self):
        super().__init__("video_sr", "psnr_y", True)

    def check_output(self, output, target):
        _check_frame(output, target)

    def loss(self, output, target):
        _check_frame(output, target)
        return charbonnier(output, target).mean()

    def per_example_loss(self, output, target):
        _check_frame(output, target)
        return charbonnier(output, target).flatten(1).mean(dim=1)

    def per_example_score(self, output, target):
        return psnr_y(output, target)

    def metric_sums(self, output, target):
        return {
            "loss": float(self.per_example_loss(output, target).sum()),
            "psnr_y": float(psnr_y(output, target).sum()),
            "ssim_y": float(ssim_y(output, target).sum()),
        }


register_task("video_sr", VideoSRTask,
              "video super-resolution: LR window -> HR centre frame; Charbonnier loss; PSNR-Y (primary) and SSIM-Y; "
              "data clips[:<window>], models vsrnet, vsrrnn")


# -- data ---------------------------------------------------------------------------------


def blur_kernel(sigma: float = BLUR_SIGMA, size: int = 5) -> np.ndarray:
    g = np.exp(-((np.arange(size) - size // 2) ** 2) / (2 * sigma**2))
    g /= g.sum()
    return np.outer(g, g)


def degrade_frame(frame: np.ndarray, scale: int = SCALE, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """Gaussian blur (reflected borders) then ×``scale`` decimation of ``[C, H, W]``."""
    k = blur_kernel(sigma)
    r = k.shape[0] // 2
    padded = np.pad(frame, ((0, 0), (r, r), (r, r)), mode="reflect")
    h, w = frame.shape[1:]
    out = np.zeros_like(frame)
    for i in range(k.shape[0]):
        for j in range(k.shape[1]):
            out += k[i, j] * padded[:, i : i + h, j : j + w]
    return out[:, ::scale, ::scale]


def _texture(rng, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    img = np.zeros((3, size, size))
    for _ in range(3):
        cycles, angle, phase = rng.uniform(1, 6), rng.uniform(0, math.pi), rng.uniform(0, 2 * math.pi)
        wave = np.sin(2 * math.pi * cycles / HR * (xx * math.cos(angle) + yy * math.sin(angle)) + phase)
        img += rng.uniform(0.2, 1.0, size=3)[:, None, None] * wave[None]
    img -= img.min()
    return 0.1 + 0.8 * img / max(img.max(), 1e-12)


def render_clip(rng, digit: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """HR frames ``[frames, 3, 32, 32]`` of one clip, its camera velocity, and the LR frames."""
    while True:
        cam = tuple(int(v) for v in rng.integers(-2, 3, size=2))
        if cam != (0, 0):
            break
    margin = 2 * frames + 2
    canvas = _texture(rng, HR + 2 * margin)
    sprite = np.kron(digit, np.ones((2, 2)))  # 16×16 alpha in [0, 1]
    colour = rng.uniform(0.0, 1.0, size=3)
    start = rng.integers(0, HR - 16, size=2)
    vel = rng.integers(-2, 3, size=2)
    centre = frames // 2
    hr = np.zeros((frames, 3, HR, HR))
    for t in range(frames):
        oy, ox = margin + cam[0] * (t - centre), margin + cam[1] * (t - centre)
        frame = canvas[:, oy : oy + HR, ox : ox + HR].copy()
        py, px = (start + vel * (t - centre)).tolist()
        y0, x0, y1, x1 = max(py, 0), max(px, 0), min(py + 16, HR), min(px + 16, HR)
        if y1 > y0 and x1 > x0:
            alpha = sprite[y0 - py : y1 - py, x0 - px : x1 - px][None]
            frame[:, y0:y1, x0:x1] = (1 - alpha) * frame[:, y0:y1, x0:x1] + alpha * colour[:, None, None]
        hr[t] = frame
    lr = np.stack([degrade_frame(f) for f in hr])
    return hr, lr, cam


def make_clips(seed: int, window: int, clips: int = CLIPS, span: int = 5):
    """``(x [N, window, 3, 16, 16], y [N, 3, 32, 32], labels [N])``; the clips (``span``
    frames each) do not depend on ``window``, which only chooses how many LR frames around
    the centre the model sees."""
    digits = load_source("digits")
    xs, ys, labels = [], [], []
    lo = span // 2 - window // 2
    for i in range(clips):
        rng = np.random.default_rng(derive_seed(seed, "clips", i))
        k = int(rng.integers(len(digits.y_train)))
        hr, lr, _ = render_clip(rng, digits.x_train[k, 0].numpy(), span)
        xs.append(lr[lo : lo + window])
        ys.append(hr[span // 2])
        labels.append(int(digits.y_train[k]))
    return (torch.from_numpy(np.stack(xs).astype(np.float32)), torch.from_numpy(np.stack(ys).astype(np.float32)),
            np.asarray(labels, dtype=np.int64))


def load_clips(name: str, o: SourceOptions) -> DataSource:
    _, _, value = name.partition(":")
    window = int(value) if value else 5
    if window < 1 or window % 2 == 0 or window > 5:
        raise DataError(f"clips:<window> takes an odd window of 1, 3 or 5 frames (the clips have 5); got {name!r}.")
    x, y, labels = make_clips(o.seed, window)
    return DataSource(name=name, x_train=x, y_train=y, x_test=None, y_test=None, num_classes=10,
                      input_shape=tuple(x.shape[1:]), labels=labels)


register_source("clips", load_clips, pattern=r"clips(:[0-9]+)?",
                description="video SR clips: 5 LR frames [5, 3, 16, 16] -> HR centre frame [3, 32, 32], panning "
                            "textures with a moving digit, blur + x2 (clips:<window>, 1 = single-image control; "
                            "task.kind: video_sr)")


# -- model --------------------------------------------------------------------------------


class VSRNet(nn.Module):
    """Sliding-window VSR: per-frame features, fusion, residual over the bicubic centre frame."""

    def __init__(self, frames: int, channels: int, width: int = 16, depth: int = 3, scale: int = SCALE):
        super().__init__()
        self.frames, self.width, self.scale = frames, width, scale
        self.embed = nn.Conv2d(channels, width, 3, padding=1)
        self.fuse = nn.Conv2d(frames * width, width, 3, padding=1)
        body: list[nn.Module] = []
        for _ in range(depth - 1):
            body += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        self.body = nn.Sequential(*body)
        self.up = nn.Conv2d(width, channels * scale * scale, 3, padding=1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = x.shape
        f = torch.relu(self.embed(x.reshape(b * t, c, h, w))).reshape(b, t * self.width, h, w)
        f = self.body(torch.relu(self.fuse(f)))
        base = F.interpolate(x[:, t // 2], scale_factor=self.scale, mode="bicubic", align_corners=False)
        return base + F.pixel_shuffle(self.up(f), self.scale)


def build_vsrnet(input_shape, num_classes=None, width: int = 16, depth: int = 3, **unused) -> nn.Module:
    if unused:
        raise ModelError(f"Unexpected option(s) for model 'vsrnet': {', '.join(sorted(unused))}. Its options: width, depth.")
    if len(input_shape) != 4:
        raise ModelError(
            f"Model 'vsrnet' is a video model: it needs clips shaped (frames, channels, height, width), but the data "
            f"has input shape {tuple(input_shape)} (single images or vectors). Use video data (data.dataset: clips, "
            "task.kind: video_sr), or for single images the image model srnet (task.kind: restoration)."
        )
    if not isinstance(depth, int) or depth < 1:
        raise ModelError(f"vsrnet depth must be a positive integer, got {depth!r}.")
    return VSRNet(int(input_shape[0]), int(input_shape[1]), int(width), depth)


register_model("vsrnet", build_vsrnet,
               "Sliding-window video SR for task video_sr: per-frame conv, fusion, x2 pixel shuffle over the bicubic "
               "centre frame (width, depth 3); last conv zero-initialised.")

__all__ = ["VSRNet", "VideoSRTask", "build_vsrnet", "degrade_frame", "load_clips", "luma", "make_clips", "psnr_y",
           "render_clip", "ssim_y"]
