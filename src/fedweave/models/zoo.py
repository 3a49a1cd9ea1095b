"""The built-in models: small networks used throughout the federated-learning literature.

* ``logistic`` -- multinomial logistic regression, ``softmax(W x + b)``: flatten, one
  linear layer (the softmax lives in the cross-entropy loss).
* ``mlp`` -- the "2NN" of McMahan et al. 2017, *Communication-Efficient Learning of Deep
  Networks from Decentralized Data* (AISTATS): fully connected ReLU layers, by default
  784-200-200-10 (199,210 parameters on MNIST).
* ``mlp_norm`` -- the same MLP with a normalisation layer after every hidden linear
  layer (linear, norm, ReLU): ``norm="batch"`` (BatchNorm1d, the setting of FedBN, Li et
  al. 2021), ``"group"`` (GroupNorm) or ``"none"``. For methods that treat normalisation
  layers specially on data without an image shape (MNIST-1D).
* ``cnn`` -- the "CNN" of the same paper: two 5x5 convolutions (32 and 64 channels), each
  followed by ReLU and 2x2 max pooling, a fully connected layer of 512 units with ReLU and
  a linear output layer.
* ``lenet5`` -- LeNet-5 after LeCun et al. 1998, *Gradient-Based Learning Applied to
  Document Recognition*, in its common modern form (ReLU and max pooling instead of
  scaled tanh and trainable subsampling): conv 6@5x5, pool, conv 16@5x5, pool, fc 120,
  fc 84, fc classes.
* ``resnet`` -- a ResNet-8 after He et al. 2016, *Deep Residual Learning for Image
  Recognition*: a 3x3 stem convolution and three stages of one BasicBlock each with
  ``width``, ``2*width`` and ``4*width`` channels (stages 2 and 3 halve the resolution),
  global average pooling and a linear layer. Hsieh et al. 2020, *The Non-IID Data Quagmire
  of Decentralized Machine Learning* (ICML), show that BatchNorm suffers under non-IID
  client data and that GroupNorm (Wu & He 2018) does not, hence ``norm="group"`` by default.

No model has dropout, and all use PyTorch's default initialisation: the caller seeds torch
before building, so that every client starts from the same, reproducible weights.

Image models accept any ``(channels, height, width)`` input, from 8x8 digits to 32x32 CIFAR:
their convolutions pad where the classic architecture would shrink the feature map too far,
and the size of the first fully connected layer is found with a dry forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import torch
from torch import nn

from fedweave.core.errors import ModelError


def build_logistic(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(prod(input_shape), num_classes))


def build_mlp(
    input_shape: tuple[int, ...], num_classes: int, hidden: Sequence[int]
) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    size = prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(size, h), nn.ReLU()]
        size = h
    layers.append(nn.Linear(size, num_classes))
    return nn.Sequential(*layers)


def build_mlp_norm(
    input_shape: tuple[int, ...], num_classes: int, hidden: Sequence[int], norm: str
) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    size = prod(input_shape)
    for h in hidden:
        layers.append(nn.Linear(size, h))
        if norm == "batch":
            layers.append(nn.BatchNorm1d(h))
        elif norm == "group":
            layers.append(nn.GroupNorm(group_count(h), h))
        layers.append(nn.ReLU())
        size = h
    layers.append(nn.Linear(size, num_classes))
    return nn.Sequential(*layers)


def _flat_size(features: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Number of features after ``features`` for one example, found by a dry forward."""
    # Some layers (BatchNorm in train mode) refuse a batch of one or update buffers, so
    # run in eval mode without gradients and restore the mode afterwards.
    was_training = features.training
    features.eval()
    try:
        with torch.no_grad():
            out = features(torch.zeros(1, *input_shape))
    except RuntimeError as err:  # e.g. a feature map shrank to nothing
        raise ModelError(
            f"Input shape {tuple(input_shape)} is too small for this model: {err}"
        ) from err
    finally:
        features.train(was_training)
    return out[0].numel()


def _pool(side: int) -> nn.Module:
    # A 2x2 pool needs a feature map of at least 2x2; tiny inputs skip it rather than fail.
    return nn.MaxPool2d(2) if side >= 2 else nn.Identity()


def build_cnn(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    channels, height, width = input_shape
    side = min(height, width)
    # padding=2 keeps 5x5 convolutions "same", so only the pools shrink the map:
    # 28x28 -> 14 -> 7 (MNIST, as in McMahan et al.), 8x8 -> 4 -> 2 (sklearn digits).
    pool1 = _pool(side)
    side = side // 2 if side >= 2 else side
    pool2 = _pool(side)
    features = nn.Sequential(
        nn.Conv2d(channels, 32, kernel_size=5, padding=2),
        nn.ReLU(),
        pool1,
        nn.Conv2d(32, 64, kernel_size=5, padding=2),
        nn.ReLU(),
        pool2,
        nn.Flatten(),
    )
    flat = _flat_size(features, input_shape)
    return nn.Sequential(
        features, nn.Linear(flat, 512), nn.ReLU(), nn.Linear(512, num_classes)
    )


def build_lenet5(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    channels, height, width = input_shape
    side = min(height, width)
    # Classic LeNet-5 takes 32x32 inputs with unpadded ("valid") convolutions:
    # 32 -conv-> 28 -pool-> 14 -conv-> 10 -pool-> 5. Smaller inputs pad the first conv
    # (28x28 MNIST then follows the same 28 -> 14 -> 10 -> 5 path), and the second conv
    # pads too when its input is below 10x10 (8x8 digits: 8 -> 4 -> 4 -> 2).
    pad1 = 0 if side >= 32 else 2
    side = side + 2 * pad1 - 4
    pool1 = _pool(side)
    side = side // 2 if side >= 2 else side
    pad2 = 0 if side >= 10 else 2
    side = side + 2 * pad2 - 4
    pool2 = _pool(side)
    features = nn.Sequential(
        nn.Conv2d(channels, 6, kernel_size=5, padding=pad1),
        nn.ReLU(),
        pool1,
        nn.Conv2d(6, 16, kernel_size=5, padding=pad2),
        nn.ReLU(),
        pool2,
        nn.Flatten(),
    )
    flat = _flat_size(features, input_shape)
    return nn.Sequential(
        features,
        nn.Linear(flat, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def group_count(channels: int, max_groups: int = 8) -> int:
    """The largest number of groups, at most ``max_groups``, that divides ``channels``."""
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


def _conv3x3(c_in: int, c_out: int, stride: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=bias)


class BasicBlock(nn.Module):
    """``relu(F(x) + shortcut(x))`` with ``F`` = conv3x3-norm-relu-conv3x3-norm (He et al. 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str) -> None:
        super().__init__()
        bias = norm == "none"  # a following norm layer makes a conv bias redundant
        self.conv1 = _conv3x3(c_in, c_out, stride, bias)
        self.norm1 = _norm(norm, c_out)
        self.conv2 = _conv3x3(c_out, c_out, 1, bias)
        self.norm2 = _norm(norm, c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            # Projection shortcut (option B of He et al.) when the shape changes.
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=bias),
                _norm(norm, c_out),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet8(nn.Module):
    """Stem conv, three one-block stages (width, 2w, 4w), global average pool, linear."""

    def __init__(self, in_channels: int, num_classes: int, width: int, norm: str) -> None:
        super().__init__()
        bias = norm == "none"
        self.stem = nn.Sequential(
            _conv3x3(in_channels, width, 1, bias), _norm(norm, width), nn.ReLU()
        )
        self.stages = nn.Sequential(
            BasicBlock(width, width, 1, norm),
            BasicBlock(width, 2 * width, 2, norm),
            BasicBlock(2 * width, 4 * width, 2, norm),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(out), 1))


def build_resnet(
    input_shape: tuple[int, int, int], num_classes: int, width: int, norm: str
) -> nn.Module:
    return ResNet8(input_shape[0], num_classes, width, norm)
