"""Typed errors with messages a person can act on.

Every error that a user can cause (a bad config, an unknown name, a malformed file)
is a :class:`FedweaveError`; the command line prints its message and exits with 2.
"""


class FedweaveError(Exception):
    """Base class of the errors that a user can cause and fix."""


class ConfigError(FedweaveError):
    """A configuration value, name or combination is invalid."""


class DataError(FedweaveError):
    """A data source is missing, malformed or unusable."""


class ModelError(FedweaveError):
    """A model cannot be built or does not fit the data."""


class DivergedError(FedweaveError):
    """The global model or the loss became non-finite."""


def unknown_name(kind: str, name: str, allowed) -> ConfigError:
    """The standard message for a name that is not registered."""
    allowed = sorted(allowed)
    return ConfigError(f"Unknown {kind} {name!r}. Allowed: {', '.join(allowed)}.")
