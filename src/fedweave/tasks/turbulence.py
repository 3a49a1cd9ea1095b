"""Turbulence prediction: the ``regression`` task, seeded Burgers' data and Fourier neural operators.

The learning side of "Wireless-Enabled Asynchronous Federated Fourier Neural Network for
Turbulence Prediction in Urban Air Mobility (UAM)" (Zeng et al., IEEE TWC 2023). The
authors' notebook (``FNN+AFL.ipynb``, read for its set-up only) trains the 1-D Fourier
neural operator of Li et al. ("Fourier Neural Operator for Parametric Partial
Differential Equations", ICLR 2021) on the Burgers'-equation data of that paper: the
operator maps an initial velocity a(x) to the solution u(x, t = 1), with 4 Fourier
layers, 16 modes, width 64, Adam at 1e-3, batch 10, the training set split over 36
aircraft. That data file is not available offline, so it is generated here by the same
physics with a seeded solver.

Task (``task.kind: regression``)
    Loss: mean squared error over all output values. Metrics, lower is better:
    ``rel_l2`` (the primary metric and headline figure, the error the FNO literature
    reports) = mean over examples of ‖ŷ − y‖₂ / ‖y‖₂; ``rmse`` = mean over examples of
    √(mean over points of (ŷ − y)²); ``loss`` = the MSE. Targets must be real-valued
    tensors shaped like the model output; class labels are refused.

Data (``data.dataset: burgers1d[:<corridors>[:<resolution>[:<samples>]]]``, default 12:64:32)
    Viscous Burgers' equation u_t + u u_x = ν u_xx on the periodic unit interval, ν = 0.02,
    from t = 0 to t = 1 (the FNO data set uses ν = 0.1, under which these fields decay to
    2% of their size by t = 1; ν = 0.02 keeps shocks and a nonlinear map to learn; on 2×
    the output grid the solution is within 0.5% of its maximum of a 8× finer solve). Initial conditions: Gaussian
    random fields a = σ_c · a₀ with a₀ ~ N(0, 625 (−Δ + 25 I)^(−2)) (the FNO data set's
    covariance): Fourier coefficients c_k, k = 1 … n/2 − 1, complex Gaussian with
    E|c_k|² = σ_c² · 625 (4π²k² + 25)^(−2), c_0 = 0, a(x) = Σ_k c_k e^(2πikx) (real).
    Clients are corridors: corridor c = 0 … C−1 has the intensity
    σ_c = 0.5 + c / (C − 1) (gusts grow from 0.5 to 1.5 across corridors: the clients are
    non-IID in the amplitude, hence the nonlinearity, of their turbulence) and
    ``samples`` training examples; a test set of ``samples // 4`` examples per corridor
    comes with the source. Solver: pseudo-spectral on 2 × resolution points with 2/3
    de-aliasing, the viscous term integrated exactly (integrating factor) and RK4 for the
    advection with a CFL step dt = 1 / (max|a| · k_max) ≤ 1e-2; input a(x) and target
    u(x, 1) are sampled on ``resolution`` points, shaped ``[1, resolution]``. Everything
    is drawn from ``(data.seed, "burgers1d", corridor)``; the natural client of each
    example is its corridor (``data.partition.kind: natural``).

Models (``model.name: fno1d``)
    Lift (a(x), x) pointwise to ``model.width`` channels; ``model.kwargs.depth`` (4)
    Fourier layers v ← σ(K v + W v), where K is :class:`SpectralConv1d` (keep the lowest
    ``model.kwargs.modes`` (16) Fourier modes, multiply them by learned complex
    in×out matrices, drop the rest) and W a pointwise linear map, σ = GELU except after
    the last layer; project pointwise by Linear(width, ``proj`` = 128) → GELU → Linear(·, 1).
    Fourier coefficients use the ``forward`` normalisation (the mean, not the sum, over
    grid points), so the same weights define the same operator on any grid fine enough
    for the kept modes (resolution invariance). ``modes`` must be at most
    resolution // 2. The data are 1-D, so there is no ``fno2d``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError, DataError, ModelError
from ..core.rng import numpy_rng
from ..core.task import Task
from ..data.sources import DataSource, register_source
from ..models import register_model
from .registry import register_task

VISCOSITY = 0.02
FINAL_TIME = 1.0
DEFAULT_CORRIDORS, DEFAULT_RESOLUTION, DEFAULT_SAMPLES = 12, 64, 32
NORM_FLOOR = 1e-12


# -- task ---------------------------------------------------------------------------------


def _check_pair(output: torch.Tensor, target: torch.Tensor) -> None:
    if not torch.is_floating_point(target):
        raise DataError(
            "task.kind regression needs real-valued targets, but this data set has integer class labels "
            f"(dtype {target.dtype}). Use regression data (data.dataset: burgers1d) or task.kind classification."
        )
    if output.shape != target.shape:
        raise ModelError(
            f"The regression task compares the model output with the target, but the output has shape "
            f"{tuple(output.shape)} and the target {tuple(target.shape)}. Use a model that maps an input field "
            "to an output field of the same shape (model.name: fno1d) with data.dataset: burgers1d."
        )


def relative_l2(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example ‖ŷ − y‖₂ / ‖y‖₂ (float64 ``[B]``, denominator floored at 1e-12)."""
    diff = (output.detach() - target).to(torch.float64).flatten(1)
    return diff.norm(dim=1) / target.to(torch.float64).flatten(1).norm(dim=1).clamp_min(NORM_FLOOR)


def per_example_mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (output - target).pow(2).flatten(1).mean(dim=1)


class RegressionTask(Task):
    """MSE loss; relative L2 error (primary, lower is better) and RMSE."""

    def __init__(self):
        super().__init__("regression", "rel_l2", False)

    def check_output(self, output, target):
        """Raise unless the targets are real-valued and shaped like the model output."""
        _check_pair(output, target)

    def loss(self, output, target):
        _check_pair(output, target)
        return F.mse_loss(output, target)

    def per_example_loss(self, output, target):
        _check_pair(output, target)
        return per_example_mse(output, target)

    def per_example_score(self, output, target):
        return relative_l2(output, target)

    def metric_sums(self, output, target):
        _check_pair(output, target)
        mse = per_example_mse(output.detach().to(torch.float64), target.to(torch.float64))
        return {
            "loss": float(mse.sum()),
            "rel_l2": float(relative_l2(output, target).sum()),
            "rmse": float(mse.sqrt().sum()),
        }


register_task("regression", RegressionTask,
              "MSE loss; relative L2 error (rel_l2, lower is better) and RMSE; data burgers1d")


# -- data ---------------------------------------------------------------------------------


def initial_spectrum(k: np.ndarray, intensity: float = 1.0) -> np.ndarray:
    """Target E|c_k|² = σ² · 625 (4π²k² + 25)^(−2) of the initial field's Fourier coefficients."""
    k = np.asarray(k, dtype=np.float64)
    return intensity**2 * 625.0 * (4 * math.pi**2 * k**2 + 25.0) ** -2


def random_fields(n: int, grid: int, intensity: float, rng: np.random.Generator) -> np.ndarray:
    """n real Gaussian random fields ``[n, grid]`` with the spectrum of :func:`initial_spectrum`."""
    k = np.arange(grid // 2 + 1)
    std = np.sqrt(initial_spectrum(k, intensity) / 2.0)  # per real and imaginary part
    std[0] = 0.0
    std[grid // 2] = 0.0  # no Nyquist mode: the field stays real and exactly band-limited
    coeffs = std * (rng.standard_normal((n, k.size)) + 1j * rng.standard_normal((n, k.size)))
    return np.fft.irfft(coeffs, n=grid, norm="forward")


def solve_burgers(a: np.ndarray, viscosity: float = VISCOSITY, final_time: float = FINAL_TIME) -> np.ndarray:
    """u(·, final_time) of u_t + u u_x = ν u_xx on the periodic unit interval from u(·, 0) = a
    (rows of ``a``): integrating-factor RK4, 2/3 de-aliasing (module docstring)."""
    n = a.shape[1]
    k = 2 * math.pi * np.fft.rfftfreq(n, d=1.0 / n)
    keep = np.arange(k.size) < (n // 3)
    k_max = float(k[keep].max())
    dt = min(1e-2, 1.0 / (max(float(np.abs(a).max()), 1e-6) * k_max))
    steps = int(math.ceil(final_time / dt))
    dt = final_time / steps
    half = np.exp(-viscosity * k**2 * dt / 2)
    full = half * half

    def advection(u_hat):
        u = np.fft.irfft(u_hat, n=n)
        return -0.5j * k * np.fft.rfft(u * u) * keep

    u_hat = np.fft.rfft(a) * keep
    for _ in range(steps):
        k1 = advection(u_hat)
        k2 = advection(half * (u_hat + 0.5 * dt * k1))
        k3 = advection(half * u_hat + 0.5 * dt * k2)
        k4 = advection(full * u_hat + dt * half * k3)
        u_hat = full * u_hat + dt / 6 * (full * k1 + 2 * half * (k2 + k3) + k4)
    return np.fft.irfft(u_hat, n=n)


def parse_burgers_name(name: str) -> tuple[int, int, int]:
    """``burgers1d[:C[:R[:S]]]`` → (corridors, resolution, samples), checked."""
    parts = name.split(":")[1:]
    defaults = [DEFAULT_CORRIDORS, DEFAULT_RESOLUTION, DEFAULT_SAMPLES]
    usage = ("data.dataset burgers1d[:<corridors>[:<resolution>[:<samples>]]] takes integers: corridors >= 2, "
             "resolution a power of two from 16 to 1024, samples >= 4 per corridor (e.g. burgers1d:12:64:32)")
    if len(parts) > 3 or not all(p.isdigit() for p in parts):
        raise ConfigError(f"{usage}; got {name!r}.")
    values = [int(p) for p in parts] + defaults[len(parts):]
    corridors, resolution, samples = values
    if corridors < 2 or samples < 4 or resolution not in [2**e for e in range(4, 11)]:
        raise ConfigError(f"{usage}; got {name!r}.")
    return corridors, resolution, samples


def corridor_intensity(corridor: int, corridors: int) -> float:
    return 0.5 + corridor / (corridors - 1)


@functools.lru_cache(maxsize=4)
def _burgers_arrays(corridors: int, resolution: int, samples: int, seed: int):

    grid = 2 * resolution
    tests = max(samples // 4, 1)
    xs, ys, cids, xt, yt, ct = [], [], [], [], [], []
    for c in range(corridors):
        rng = numpy_rng(seed, "burgers1d", c)
        a = random_fields(samples + tests, grid, corridor_intensity(c, corridors), rng)
        u = solve_burgers(a)
        a, u = a[:, ::2], u[:, ::2]
        xs.append(a[:samples]), ys.append(u[:samples]), cids.append(np.full(samples, c))
        xt.append(a[samples:]), yt.append(u[samples:]), ct.append(np.full(tests, c))

    def stack(parts):
        return np.concatenate(parts).astype(np.float32)[:, None, :]

    return stack(xs), stack(ys), np.concatenate(cids), stack(xt), stack(yt), np.concatenate(ct)


def burgers_source(name: str, seed: int):
    """The ``burgers1d`` DataSource (module docstring); corridors are natural clients."""
    corridors, resolution, samples = parse_burgers_name(name)
    x, y, cids, xt, yt, _ = _burgers_arrays(corridors, resolution, samples, int(seed))
    return DataSource(
        name=name, x_train=torch.from_numpy(x.copy()), y_train=torch.from_numpy(y.copy()),
        x_test=torch.from_numpy(xt.copy()), y_test=torch.from_numpy(yt.copy()), num_classes=corridors,
        input_shape=(1, resolution), client_ids=cids.astype(np.int64), labels=cids.astype(np.int64),
    )


# -- models -------------------------------------------------------------------------------


class SpectralConv1d(nn.Module):
    """Fourier layer K: v ↦ IDFT(R · DFT(v)) on the lowest ``modes`` modes.

    ``v̂_k = (1/N) Σ_n v_n e^(−2πikn/N)`` (forward normalisation), ``ŵ_{o,k} = Σ_i v̂_{i,k}
    R_{i,o,k}`` for k < modes and 0 above, ``w_n = Σ_k ŵ_k e^(2πikn/N)`` with Hermitian
    symmetry (``irfft``). R is complex, stored as a real ``[in, out, modes, 2]`` tensor so
    that every parameter is real; initialised uniform in [0, 1/(in·out)) as in the FNO.
    """

    def __init__(self, in_channels: int, out_channels: int, modes: int):
        super().__init__()
        self.modes = modes
        scale = 1.0 / (in_channels * out_channels)
        self.weight = nn.Parameter(scale * torch.rand(in_channels, out_channels, modes, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1]
        if self.modes > n // 2:
            raise ModelError(f"SpectralConv1d keeps {self.modes} modes, but a grid of {n} points resolves at most "
                             f"{n // 2}; use a grid of at least {2 * self.modes} points or fewer modes.")
        x_ft = torch.fft.rfft(x, norm="forward")
        weight = torch.view_as_complex(self.weight)
        kept = torch.einsum("bik,iok->bok", x_ft[..., : self.modes], weight)
        # zeros above the kept modes, built without in-place writes (the vectorized executor vmaps this)
        dropped = kept.new_zeros(kept.shape[:-1] + (n // 2 + 1 - self.modes,))
        return torch.fft.irfft(torch.cat([kept, dropped], dim=-1), n=n, norm="forward")


class FNO1d(nn.Module):
    """The 1-D Fourier neural operator (module docstring): ``[B, 1, N]`` → ``[B, 1, N]``."""

    def __init__(self, modes: int = 16, width: int = 64, depth: int = 4, proj: int = 128):
        super().__init__()
        self.lift = nn.Linear(2, width)
        self.spectral = nn.ModuleList(SpectralConv1d(width, width, modes) for _ in range(depth))
        self.pointwise = nn.ModuleList(nn.Conv1d(width, width, 1) for _ in range(depth))
        self.proj1 = nn.Linear(width, proj)
        self.proj2 = nn.Linear(proj, 1)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        n = a.shape[-1]
        grid = torch.arange(n, dtype=a.dtype, device=a.device) / n  # periodic grid x_n = n/N
        v = self.lift(torch.stack([a[:, 0], grid.expand(a.shape[0], n)], dim=-1)).transpose(1, 2)
        for i, (k, w) in enumerate(zip(self.spectral, self.pointwise)):
            v = k(v) + w(v)
            if i < len(self.spectral) - 1:
                v = F.gelu(v)
        return self.proj2(F.gelu(self.proj1(v.transpose(1, 2)))).transpose(1, 2)


def build_fno1d(input_shape, num_classes=None, width: int = 64, modes: int = 16, depth: int = 4, proj: int = 128,
                norm=None, **unused) -> nn.Module:
    if unused:
        raise ModelError(f"Unexpected option(s) for model 'fno1d': {', '.join(sorted(unused))}. "
                         "Its options: width, model.kwargs modes, depth, proj.")
    shape = tuple(input_shape)
    if len(shape) != 2 or shape[0] != 1:
        raise ModelError(f"Model 'fno1d' needs a 1-D field shaped (1, grid points), got input shape {shape} "
                         "(data.dataset: burgers1d).")
    for key, value in {"modes": modes, "depth": depth, "proj": proj, "width": width}.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ModelError(f"fno1d {key} must be a positive integer, got {value!r}.")
    if modes > shape[1] // 2:
        raise ModelError(
            f"fno1d keeps the lowest model.kwargs.modes={modes} Fourier modes, but a grid of {shape[1]} points "
            f"resolves at most {shape[1] // 2}; allowed: 1 <= modes <= {shape[1] // 2}."
        )
    return FNO1d(modes, width, depth, proj)


register_source(
    "burgers1d", lambda name, options: burgers_source(name, options.seed), pattern=r"burgers1d(:.*)?",
    description="turbulence for task.kind regression: seeded Burgers' solutions u(x, 1) from random initial "
    "fields, one natural client per UAM corridor; burgers1d:<corridors>:<resolution>:<samples>",
)

register_model(
    "fno1d",
    build_fno1d,
    "1-D Fourier neural operator (Li et al. 2021) for task regression: lift (a, x), depth Fourier layers keeping "
    "the lowest modes (16), project; field [1, N] -> [1, N].",
)

__all__ = [
    "FNO1d", "RegressionTask", "SpectralConv1d", "build_fno1d", "burgers_source", "initial_spectrum",
    "parse_burgers_name", "random_fields", "relative_l2", "solve_burgers",
]
