"""``vsrrnn``: a small recurrent video SR model with flow-based alignment learned from scratch,
for the ``video_sr`` task (:mod:`fedweave.tasks.video_sr`).

The idea is BasicVSR's — K. C. K. Chan, X. Wang, K. Yu, C. Dong, C. C. Loy, "BasicVSR: The
Search for Essential Components in Video Super-Resolution and Beyond", CVPR 2021 — whose
four components are, in the paper's words, propagation, alignment, aggregation and
upsampling:

* **Alignment** (paper Sec. 3.1): the hidden features propagated from the neighbouring
  frame are *backward-warped* to the current frame with an optical flow estimated on the
  low-resolution frames, h̄ = W(h_{i±1}, s_{i→i±1}), where

      W(h, s)[p] = h[p + s(p)]        (bilinear interpolation, zero outside the frame)

  and s(p) = (s_x, s_y) is the displacement, in LR pixels, from pixel p of frame i to
  where the same scene point lies in frame i ± 1. ``flow_warp`` implements W with
  ``grid_sample`` (``align_corners=True``, zero padding, as the official code's
  ``flow_warp``).
* **Propagation** (Sec. 3.1, bidirectional): a backward branch runs from the last frame
  towards the first and a forward branch from the first to the last, each
  h_i = R(concat(x_i, W(h_{i±1}, s_{i→i±1}))), with h = 0 before the first frame; R is a
  3×3 input convolution and ``blocks`` residual blocks (conv–LeakyReLU(0.1)–conv plus the
  identity, no normalisation).
* **Aggregation and upsampling**: the two branches' features at the output frame are
  concatenated, fused by a 1×1 convolution, turned into C·s² channels by a 3×3
  convolution and pixel-shuffled ×s, and added to the upsampled LR frame.

What is ours, and why:

* **Only the centre frame is reconstructed**: the ``video_sr`` task asks for the HR centre
  frame c = T // 2 of a window of T LR frames (like ``vsrnet``), so the backward branch
  runs over frames T − 1 … c and the forward branch over 0 … c (BasicVSR outputs every
  frame of the sequence). Within the window both branches therefore carry every frame's
  information to the centre.
* **The flow network is ours and learned from scratch** by the SR loss alone. BasicVSR
  uses a pretrained SPyNet (a five-level pyramid); no pretrained flow weights can be
  fetched here, and issue #19 asks for none. Ours is four 3×3 convolutions (``width``
  channels, LeakyReLU 0.1) on the pair concat(x_i, x_{i±1}) → 2 channels at LR
  resolution, one network shared by both directions (as BasicVSR shares its SPyNet). Its
  last convolution starts at zero, so it starts at zero flow (the identity warp). There is
  no coarse-to-fine pyramid: in the ``clips`` data neighbouring frames move by at most
  2 HR = 1 LR pixel per axis (camera pan and digit velocity both in −2…2 HR px a frame),
  well inside the 9×9 receptive field of four 3×3 convolutions.
* **Sizes**: ``width`` 16 channels and ``blocks`` 2 residual blocks per branch (BasicVSR:
  64 and 30), to match the scale of ``vsrnet`` (width 16) on 16×16 LR frames and a CPU
  budget; LeakyReLU(0.1) activations as in BasicVSR (``vsrnet`` uses ReLU).
* **Upsampling**: one ×2 pixel shuffle (the task's scale; BasicVSR ×4 in two steps, plus
  two HR convolutions), and the residual base is the *bicubic* upsampling of the centre LR
  frame (BasicVSR: bilinear) with the last convolution zero-initialised, exactly as
  ``vsrnet``: the untrained model returns the bicubic baseline, so both models start from
  the same point.
* **``align: false``** (``model.kwargs``; ours, an ablation): the propagated features are
  passed on unwarped and the flow network is not used — the same recurrence without
  alignment, to tell what the alignment adds from what the recurrence adds.
* **One frame** (``clips:1``): no neighbour, so no flow or warp is used; both branches see
  only the centre frame and the model is a single-image SR network with the same
  parameters — the control for what the neighbours add.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ModelError
from ..models import register_model
from .video_sr import SCALE

LEAKY_SLOPE = 0.1  # BasicVSR's LeakyReLU slope (official code)


def flow_warp(feat: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp: ``out[b, :, y, x] = feat[b, :, y + flow[b, 1, y, x], x + flow[b, 0, y, x]]``.

    ``feat`` ``[B, C, H, W]``, ``flow`` ``[B, 2, H, W]`` in pixels (channel 0 horizontal,
    channel 1 vertical); bilinear interpolation, zero outside the frame."""
    if feat.dim() != 4 or flow.shape != (feat.shape[0], 2, feat.shape[2], feat.shape[3]):
        raise ModelError(f"flow_warp needs features [B, C, H, W] and a flow [B, 2, H, W]; got "
                         f"{tuple(feat.shape)} and {tuple(flow.shape)}.")
    _, _, h, w = feat.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=flow.dtype, device=flow.device),
                            torch.arange(w, dtype=flow.dtype, device=flow.device), indexing="ij")
    gx = xs + flow[:, 0]
    gy = ys + flow[:, 1]
    # align_corners=True: pixel 0 is at -1 and pixel n - 1 at +1
    grid = torch.stack((2.0 * gx / max(w - 1, 1) - 1.0, 2.0 * gy / max(h - 1, 1) - 1.0), dim=-1)
    return F.grid_sample(feat, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class FlowNet(nn.Module):
    """From-scratch flow at LR: concat(ref, nbr) → 4 3×3 convs → s with nbr[p + s(p)] ≈ ref[p]."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(2 * channels, width, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(width, 2, 3, padding=1),
        )
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, ref: torch.Tensor, nbr: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([ref, nbr], dim=1))


class ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.leaky_relu(self.conv1(x), LEAKY_SLOPE))


class Propagator(nn.Module):
    """One branch's step: h_i = R(concat(x_i, aligned h_{i±1}))."""

    def __init__(self, channels: int, width: int, blocks: int):
        super().__init__()
        self.conv_in = nn.Conv2d(channels + width, width, 3, padding=1)
        self.blocks = nn.Sequential(*[ResidualBlock(width) for _ in range(blocks)])

    def forward(self, frame: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return self.blocks(F.leaky_relu(self.conv_in(torch.cat([frame, hidden], dim=1)), LEAKY_SLOPE))


class RecurrentVSR(nn.Module):
    """Bidirectional recurrent VSR with learned flow alignment; returns the HR centre frame."""

    def __init__(self, channels: int, width: int = 16, blocks: int = 2, scale: int = SCALE, align: bool = True):
        super().__init__()
        self.channels, self.width, self.scale, self.align = channels, width, scale, align
        self.flow = FlowNet(channels, width)
        self.backward_branch = Propagator(channels, width, blocks)
        self.forward_branch = Propagator(channels, width, blocks)
        self.fuse = nn.Conv2d(2 * width, width, 1)
        self.up = nn.Conv2d(width, channels * scale * scale, 3, padding=1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def _propagate(self, x: torch.Tensor, order: range, branch: Propagator) -> torch.Tensor:
        b, _, c, h, w = x.shape
        hidden = x.new_zeros(b, self.width, h, w)
        previous = None
        for i in order:
            if previous is not None and self.align:  # align the neighbour's features to frame i
                hidden = flow_warp(hidden, self.flow(x[:, i], x[:, previous]))
            hidden = branch(x[:, i], hidden)
            previous = i
        return hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[2] != self.channels:
            raise ModelError(f"vsrrnn takes clips [batch, frames, {self.channels}, height, width]; got input of "
                             f"shape {tuple(x.shape)}.")
        t = x.shape[1]
        centre = t // 2
        back = self._propagate(x, range(t - 1, centre - 1, -1), self.backward_branch)
        fwd = self._propagate(x, range(0, centre + 1), self.forward_branch)
        feat = F.leaky_relu(self.fuse(torch.cat([fwd, back], dim=1)), LEAKY_SLOPE)
        base = F.interpolate(x[:, centre], scale_factor=self.scale, mode="bicubic", align_corners=False)
        return base + F.pixel_shuffle(self.up(feat), self.scale)


def build_vsrrnn(input_shape, num_classes=None, width: int = 16, blocks: int = 2, align: bool = True,
                 **unused) -> nn.Module:
    if unused:
        raise ModelError(f"Unexpected option(s) for model 'vsrrnn': {', '.join(sorted(unused))}. "
                         "Its options: width, blocks, align.")
    if len(input_shape) != 4:
        raise ModelError(
            f"Model 'vsrrnn' is a video model: it needs clips shaped (frames, channels, height, width), but the data "
            f"has input shape {tuple(input_shape)} (single images or vectors). Use video data (data.dataset: clips, "
            "task.kind: video_sr), or for single images the image model srnet (task.kind: restoration)."
        )
    if input_shape[0] % 2 == 0:
        raise ModelError(f"Model 'vsrrnn' reconstructs the centre frame of its window, so it needs an odd number of "
                         f"frames; the data has {input_shape[0]} (input shape {tuple(input_shape)}).")
    for name, value in (("width", width), ("blocks", blocks)):
        if not isinstance(value, int) or isinstance(value, bool) or value < (1 if name == "width" else 0):
            raise ModelError(f"vsrrnn {name} must be a {'positive' if name == 'width' else 'non-negative'} "
                             f"integer, got {value!r}.")
    if not isinstance(align, bool):
        raise ModelError(f"vsrrnn align must be true or false, got {align!r}.")
    return RecurrentVSR(int(input_shape[1]), width, blocks, align=align)


register_model("vsrrnn", build_vsrrnn,
               "Recurrent video SR for task video_sr (BasicVSR-style): bidirectional propagation to the centre frame, "
               "features aligned by a flow net learned from scratch, x2 pixel shuffle over the bicubic centre frame "
               "(width 16, blocks 2, align true); last conv zero-initialised.")

__all__ = ["FlowNet", "RecurrentVSR", "build_vsrrnn", "flow_warp"]
