"""Training-time augmentation of image minibatches (``data.augment``), as batched tensor ops.

``crop_flip`` is the CIFAR recipe of He et al. 2016 ("Deep Residual Learning", §4.2): pad
each image with 4 zero pixels on every side, take a random crop of the original size and
flip it horizontally with probability ½ — torchvision's ``RandomCrop(size, padding=4)``
followed by ``RandomHorizontalFlip()``. Here the whole minibatch ``[B, C, H, W]`` is done
at once: the offsets ``(dy, dx) ∈ {0..8}²`` and the flips of all B images are drawn from
the job's generator (in that order: dy, dx, flip), and one gather builds the output,

    out[b, c, i, j] = padded[b, c, dy_b + i, dx_b + (W − 1 − j if flip_b else j)].

The draws come from the job's ``batches`` generator after its epoch orders, so a job's
augmentations depend only on ``(seed, client, job counter)``, whatever the executor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUGMENTS = {
    "none": "no augmentation",
    "crop_flip": "random crop of the original size from the image padded by 4 zeros, then a horizontal flip "
    "with probability 1/2 (CIFAR, He et al. 2016)",
}
PAD = 4


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = PAD) -> torch.Tensor:
    """Randomly crop (zero padding ``pad``) and horizontally flip every image of ``x [B, C, H, W]``."""
    b, _, h, w = x.shape
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(h)[None, :]).to(x.device)  # [B, H]
    cols_in = torch.arange(w)[None, :].expand(b, w)
    cols = (dx[:, None] + torch.where(flip[:, None], w - 1 - cols_in, cols_in)).to(x.device)  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    # advanced indexing on dims 0, 2, 3 puts the channel dim last: [B, H, W, C]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """``x`` augmented by ``kind`` (a key of :data:`AUGMENTS`)."""
    if kind == "none":
        return x
    if kind == "crop_flip":
        return crop_flip(x, generator)
    raise ValueError(f"unknown augmentation {kind!r}; allowed: {', '.join(AUGMENTS)}")
