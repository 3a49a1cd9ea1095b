"""Compatibility path: the typed errors live in :mod:`fedweave.core.errors`."""

from .core.errors import ConfigError, DataError, DivergedError, FedweaveError, ModelError, unknown_name

__all__ = ["FedweaveError", "ConfigError", "DataError", "ModelError", "DivergedError", "unknown_name"]
