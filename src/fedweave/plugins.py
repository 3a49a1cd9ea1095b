"""Users' own modules: import them so their methods, stages, models, tasks and data
sources register themselves, without editing the package.

``fedweave run --import mymethods`` (repeatable, on every command) and ``plugins:
[mymethods]`` in a config both end here. The current folder is importable, as it is for
``python -m``, so a module next to the config is found and ``model.name:
mymodels:make_net`` resolves. A module that fails to import is a :class:`ConfigError`
naming the module and the reason.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Iterable

from .core.errors import ConfigError

#: plugin modules imported in this process, in order (sweep workers import the same)
IMPORTED: list[str] = []


def current_folder_importable() -> None:
    """Put the working folder on ``sys.path`` (first), as ``python -m`` does."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def import_plugins(modules: Iterable[str] | None) -> list[str]:
    """Import each module by name (``pkg.mod``; a ``.py`` path is taken as its module name)."""
    current_folder_importable()
    done = []
    for raw in modules or []:
        name = str(raw).strip()
        if name.endswith(".py"):
            name = name[:-3].replace("/", ".").replace("\\", ".").lstrip(".")
        if not name or not all(part.isidentifier() for part in name.split(".")):
            raise ConfigError(f"Plugin {raw!r} is not a module name; give an importable name such as "
                              "'mymethods' or 'mypackage.methods' (a file mymethods.py in the current folder "
                              "is imported as 'mymethods').")
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name or name.startswith(f"{exc.name}."):
                raise ConfigError(f"Cannot import plugin module {name!r}: no such module in the current folder "
                                  f"({os.getcwd()}) or on the Python path.") from None
            raise ConfigError(f"Cannot import plugin module {name!r}: it needs module {exc.name!r}, which is not "
                              "installed.") from None
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            raise ConfigError(f"Cannot import plugin module {name!r}: {type(exc).__name__}: {exc} "
                              f"(at {where.filename}:{where.lineno}).") from None
        if name not in IMPORTED:
            IMPORTED.append(name)
        done.append(name)
    return done


__all__ = ["import_plugins", "current_folder_importable", "IMPORTED"]
