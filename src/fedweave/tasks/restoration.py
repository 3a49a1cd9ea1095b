"""Image restoration: the ``restoration`` task, x<k> super-resolution data and a small SR net.

Task (``task.kind: restoration``)
    Loss: the Charbonnier loss, mean over pixels of √((ŷ − y)² + ε), ε = 1e-6 (a smooth
    L1, the pixel loss of the video super-resolution models FedVSR trains).
    Metric: PSNR in dB, higher is better, per image 10·log10(1 / MSE(clamp(ŷ, 0, 1), y)):
    images are taken to lie in [0, 1] (every built-in image source does), the output is
    clamped to that range before scoring, and the MSE is floored at 1e-10 (at most 100 dB).
    ``per_example_score`` is the per-image PSNR, so per-client fairness figures
    (``eval.per_client``) average PSNR over a client's validation images; the reported
    ``psnr`` is the mean per-image PSNR over the test set.

Data (``data.dataset: sr<k>:<source>``, e.g. ``sr2:mnist5k`` or ``sr2:digits``)
    From any image source ``[N, C, H, W]`` with sides divisible by k: the target y is the
    original image; the input x is the image downsampled by k (area average, i.e. k×k mean
    pooling) and upsampled back by bicubic interpolation (clamped to [0, 1]), so input and
    target have the same shape and the model learns the residual detail. The class labels
    of the source travel beside the targets (``DataSource.labels`` /
    ``FederatedDataset.labels``): test and server splits stay stratified and every
    partitioner (Dirichlet label skew included) works as for classification.

Model (``model.name: srnet``)
    ``x + conv3x3(ReLU(conv3x3(ReLU(conv3x3(x)))))`` with ``model.width`` channels inside
    (``model.kwargs.depth`` convolutions, default 3). The last convolution starts at zero, so
    the untrained network returns its bicubic input: training starts from the interpolation
    baseline rather than from noise.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import DataError, ModelError
from ..core.task import Task
from ..data.sources import DataSource, SourceOptions, load_source, register_source
from ..models import register_model
from .registry import register_task

CHARBONNIER_EPS = 1e-6
MSE_FLOOR = 1e-10


def _check_pair(output: torch.Tensor, target: torch.Tensor) -> None:
    if output.shape != target.shape:
        raise ModelError(
            f"The restoration task compares the model output with a target image, but the output has shape "
            f"{tuple(output.shape)} and the target {tuple(target.shape)}. Use an image-to-image model "
            "(model.name: srnet) and restoration data (data.dataset: sr2:<image source>, e.g. sr2:mnist5k)."
        )


def charbonnier(output: torch.Tensor, target: torch.Tensor, eps: float = CHARBONNIER_EPS) -> torch.Tensor:
    """Element-wise √((ŷ − y)² + ε)."""
    diff = output - target
    return torch.sqrt(diff * diff + eps)


def psnr(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of ``output`` clamped to [0, 1] against ``target`` (float64 ``[B]``)."""
    _check_pair(output, target)
    diff = output.detach().clamp(0.0, 1.0).to(torch.float64) - target.to(torch.float64)
    mse = (diff * diff).flatten(1).mean(dim=1).clamp_min(MSE_FLOOR)
    return -10.0 * torch.log10(mse)


class RestorationTask(Task):
    """Charbonnier loss; PSNR (dB, higher is better)."""

    def __init__(self):
        super().__init__("restoration", "psnr", True)

    def check_output(self, output, target):
        """Raise ModelError unless the model maps inputs to images shaped like the targets."""
        _check_pair(output, target)

    def loss(self, output, target):
        _check_pair(output, target)
        return charbonnier(output, target).mean()

    def per_example_loss(self, output, target):
        _check_pair(output, target)
        return charbonnier(output, target).flatten(1).mean(dim=1)

    def per_example_score(self, output, target):
        return psnr(output, target)

    def metric_sums(self, output, target):
        return {
            "loss": float(self.per_example_loss(output, target).sum()),
            "psnr": float(psnr(output, target).sum()),
        }


register_task("restoration", RestorationTask, "Charbonnier loss; PSNR in dB (higher is better); data sr<k>:<source>")


# -- data ---------------------------------------------------------------------------------


def degrade(images: torch.Tensor, scale: int, chunk: int = 4096) -> torch.Tensor:
    """Downsample by ``scale`` (area average) and upsample back (bicubic), clamped to [0, 1]."""
    out = torch.empty_like(images)
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk]
        low = F.avg_pool2d(x, scale)
        out[start : start + chunk] = F.interpolate(low, scale_factor=scale, mode="bicubic", align_corners=False).clamp_(0.0, 1.0)
    return out


def super_resolution_source(base, scale: int):
    """The x``scale`` super-resolution version of the image source ``base`` (a DataSource)."""
    shape = tuple(base.input_shape)
    if scale < 2:
        raise DataError(f"Super-resolution needs a scale of at least 2 (sr2:<source>), got sr{scale}.")
    if len(shape) != 3 or shape[1] % scale or shape[2] % scale:
        raise DataError(
            f"sr{scale}:{base.name} needs images shaped (channels, height, width) with height and width divisible "
            f"by {scale}; {base.name!r} has input shape {shape}. Image sources: digits, mnist5k, mnist, "
            "fashion_mnist, cifar10, or an npz of images."
        )
    labels = base.labels if base.labels is not None else base.y_train.numpy()
    x_test = y_test = None
    if base.x_test is not None:
        x_test, y_test = degrade(base.x_test, scale), base.x_test.clone()
    return DataSource(
        name=f"sr{scale}:{base.name}",
        x_train=degrade(base.x_train, scale),
        y_train=base.x_train.clone(),
        x_test=x_test,
        y_test=y_test,
        num_classes=base.num_classes,
        input_shape=shape,
        client_ids=base.client_ids,
        labels=np.asarray(labels, dtype=np.int64),
    )


def load_super_resolution(name: str, o: SourceOptions) -> DataSource:
    """The source ``sr<k>:<base>``: the base source loaded with the same options (its
    ``data.name``, ``data.split`` and ``data.columns`` excepted), made x<k> pairs."""
    scale, _, base = name[2:].partition(":")
    source = load_source(base, root=o.root, seed=o.seed, synthetic_alpha=o.synthetic_alpha,
                         synthetic_beta=o.synthetic_beta, synthetic_num_clients=o.synthetic_num_clients,
                         synthetic_dim=o.synthetic_dim, synthetic_classes=o.synthetic_classes)
    return super_resolution_source(source, int(scale))


# a family of names, not listed among the data sets (the task's description names it)
register_source("sr<k>:<source>", load_super_resolution, pattern=r"sr[0-9]+:.*",
                description="super-resolution pairs made from an image source: its images blurred and "
                            "downsampled by k (e.g. sr2:digits; task.kind: restoration)")


# -- model --------------------------------------------------------------------------------


class SRNet(nn.Module):
    """A small residual super-resolution CNN: ``x + body(x)``."""

    def __init__(self, channels: int, width: int = 16, depth: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = channels
        for i in range(depth - 1):
            layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU()]
            c_in = width
        last = nn.Conv2d(c_in, channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.body = nn.Sequential(*layers, last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def build_srnet(input_shape, num_classes=None, width: int = 16, depth: int = 3, **unused) -> nn.Module:
    if unused:
        raise ModelError(f"Unexpected option(s) for model 'srnet': {', '.join(sorted(unused))}. Its options: width, depth.")
    if len(input_shape) != 3:
        raise ModelError(f"Model 'srnet' needs image input shaped (channels, height, width), got {tuple(input_shape)}.")
    if not isinstance(depth, int) or depth < 1:
        raise ModelError(f"srnet depth must be a positive integer, got {depth!r}.")
    return SRNet(int(input_shape[0]), width, depth)


register_model(
    "srnet",
    build_srnet,
    "Residual SR CNN for the restoration task: x + conv3x3 stack (width channels, depth 3), last conv zero-initialised.",
)

__all__ = ["RestorationTask", "SRNet", "build_srnet", "charbonnier", "degrade", "load_super_resolution", "psnr",
           "super_resolution_source"]
