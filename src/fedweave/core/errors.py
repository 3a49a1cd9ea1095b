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


def nearest(name: str, allowed) -> str | None:
    """The allowed name closest to ``name`` (a likely typo), or None when none is close."""
    import difflib

    lowered = {str(a).lower(): str(a) for a in allowed}
    match = difflib.get_close_matches(str(name).lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None


def unknown_name(kind: str, name: str, allowed) -> ConfigError:
    """The standard message for a name that is not registered (with the nearest valid name)."""
    allowed = sorted(allowed)
    guess = nearest(name, allowed)
    hint = f" Did you mean {guess!r}?" if guess is not None else ""
    return ConfigError(f"Unknown {kind} {name!r}.{hint} Allowed: {', '.join(allowed)}.")
