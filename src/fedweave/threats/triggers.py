"""Backdoor triggers: where they sit in the input, how they are stamped, and DBA pieces.

A trigger is a ``size × size`` checkerboard square whose bottom-right corner sits
``offset`` pixels from the bottom-right corner of the image (every channel): pixel
``(i, j)`` of the square takes the "on" value (by default the data's maximum) when
``i + j`` is even and the "off" value (the data's minimum) otherwise. This is a
BadNets-style pixel pattern (Gu et al. 2017) that a clean model never sees.
For 1-D inputs ``(L,)`` or ``(C, L)`` (images are ``(C, H, W)``) the square becomes a run of ``size`` features that
ends ``offset`` features before the end, alternating on/off.

Distributed backdoor attack (DBA, Xie et al., ICLR 2020): the square is cut into
``parts`` bands of rows (``numpy.array_split`` of its rows; of its features for 1-D
inputs); malicious client number ``i`` (in increasing client-id order among the
attackers) stamps piece ``i mod parts`` during training, and the *whole* square is used at
test time. With ``size = parts = 4`` each piece is one 1×4 line, the MNIST shape of the
DBA paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.errors import ConfigError


@dataclass(frozen=True)
class Trigger:
    """The trigger's region (a boolean mask over one input) and its pixel values."""

    region: torch.Tensor  # bool, input_shape
    pattern: torch.Tensor  # float, input_shape (only meaningful inside region)
    pieces: tuple[torch.Tensor, ...]  # bool masks of the DBA pieces (one piece: the region)

    def stamp(self, x: torch.Tensor, piece: int | None = None) -> torch.Tensor:
        """``x`` ``[B, *input_shape]`` with the trigger (or one DBA piece) stamped; a new tensor."""
        mask = self.region if piece is None else self.pieces[piece % len(self.pieces)]
        return torch.where(mask.to(x.device), self.pattern.to(x.device, x.dtype), x)

    @property
    def num_pieces(self) -> int:
        return len(self.pieces)


def _spatial(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The dimensions the trigger lives in: (H, W) for images, (L,) for 1-D inputs."""
    if len(input_shape) == 3:
        return tuple(input_shape[1:])
    if len(input_shape) == 2:  # (C, L) signals such as MNIST-1D
        return (input_shape[1],)
    if len(input_shape) == 1:
        return tuple(input_shape)
    raise ConfigError(f"A backdoor trigger needs 1-D or image inputs; got input shape {tuple(input_shape)}.")


def check_trigger_fits(input_shape: tuple[int, ...], size: int, offset: int) -> None:
    """Raise ConfigError when a ``size`` trigger at ``offset`` does not fit the input."""
    dims = _spatial(input_shape)
    if any(size + offset > d for d in dims):
        shape = "x".join(map(str, dims))
        raise ConfigError(
            f"attack.trigger.size={size} with offset={offset} needs {size + offset} pixels per side, "
            f"but the inputs are {shape}; lower attack.trigger.size or attack.trigger.offset."
        )


def make_trigger(
    input_shape: tuple[int, ...], size: int, offset: int = 1, on: float = 1.0, off: float = 0.0, parts: int = 1
) -> Trigger:
    """The trigger for inputs of ``input_shape`` (without the batch dimension)."""
    check_trigger_fits(input_shape, size, offset)
    if parts > size:
        raise ConfigError(f"attack.trigger.parts={parts} cannot cut a square of {size} rows; use parts <= size.")
    dims = _spatial(input_shape)
    lead = tuple(input_shape[: len(input_shape) - len(dims)])  # channel dims, broadcast over
    region = torch.zeros(dims, dtype=torch.bool)
    pattern = torch.zeros(dims, dtype=torch.float32)
    rows = np.arange(dims[0] - offset - size, dims[0] - offset)
    pieces_rows = np.array_split(rows, parts)
    pieces = []
    if len(dims) == 2:
        cols = np.arange(dims[1] - offset - size, dims[1] - offset)
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                region[r, c] = True
                pattern[r, c] = on if (i + j) % 2 == 0 else off
        for band in pieces_rows:
            m = torch.zeros(dims, dtype=torch.bool)
            m[int(band[0]) : int(band[-1]) + 1, int(cols[0]) : int(cols[-1]) + 1] = True
            pieces.append(m)
    else:
        for i, r in enumerate(rows):
            region[r] = True
            pattern[r] = on if i % 2 == 0 else off
        for band in pieces_rows:
            m = torch.zeros(dims, dtype=torch.bool)
            m[int(band[0]) : int(band[-1]) + 1] = True
            pieces.append(m)

    def expand(t: torch.Tensor) -> torch.Tensor:
        return t.reshape((1,) * len(lead) + dims).expand(lead + dims).contiguous()

    return Trigger(expand(region), expand(pattern), tuple(expand(p) for p in pieces))
