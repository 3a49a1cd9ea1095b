"""One rule for registering a name, and a record of which module registered it.

Every registry (methods, weightings, combiners, models, tasks, data sources) calls
:func:`claim` before it stores an entry: a name registered twice is an error unless
``replace=True`` (a notebook cell run again), and the registering module is recorded so
that a sweep can import the same modules in its worker processes — or refuse, before
anything runs, a name that only exists in ``__main__`` (a script or a notebook), which
worker processes cannot import.
"""

from __future__ import annotations

import sys
from typing import Any, Mapping

#: (kind, name) -> the module that registered it
ORIGINS: dict[tuple[str, str], str] = {}


def claim(kind: str, name: str, table: Mapping[str, Any], replace: bool = False, *, depth: int = 2) -> None:
    """Check that ``name`` may be registered as a ``kind`` in ``table`` and note who registers it.

    ``depth`` is how many frames above this call the registering module is (2: the
    caller of the ``register_*`` function that calls ``claim``).
    """
    if name in table and not replace:
        raise ValueError(f"{kind} {name!r} registered twice; pass replace=True to register it again "
                         "(for instance when a notebook cell is run a second time).")
    try:
        module = sys._getframe(depth).f_globals.get("__name__", "__main__")
    except ValueError:  # shallower stack than expected
        module = "__main__"
    ORIGINS[(kind, name)] = module


def origin(kind: str, name: str) -> str | None:
    """The module that registered ``name`` as a ``kind`` (None: built in or unknown)."""
    return ORIGINS.get((kind, name))


def user_modules() -> list[str]:
    """Modules outside fedweave that registered something and are still loaded, in registration order."""
    seen: dict[str, None] = {}
    for module in ORIGINS.values():
        if module in sys.modules and module != "__main__" and module != "fedweave" and not module.startswith("fedweave."):
            seen.setdefault(module)
    return list(seen)
