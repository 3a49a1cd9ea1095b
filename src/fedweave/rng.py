"""Compatibility path: seed derivation lives in :mod:`fedweave.core.rng`."""

from .core.rng import derive_seed, numpy_rng, torch_generator

__all__ = ["derive_seed", "numpy_rng", "torch_generator"]
