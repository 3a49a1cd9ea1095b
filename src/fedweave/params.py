"""Compatibility path: the flat parameter layout lives in :mod:`fedweave.core.params`."""

from .core.params import FlatModel, ParamSpec, ROLES, Segment

__all__ = ["ROLES", "Segment", "ParamSpec", "FlatModel"]
