"""Imports every method module once, so that each registers itself.

Method modules are discovered, not listed: adding ``methods/<name>.py`` that calls
``register(...)`` is all it takes. Modules whose names start with ``_`` and the
framework modules are skipped.
"""

import importlib
import pkgutil

_FRAMEWORK = {"base", "needs", "registry", "robust", "stages", "threat_adapter"}

from fedweave import methods as _package

for _info in sorted(pkgutil.iter_modules(_package.__path__), key=lambda m: m.name):
    if not _info.name.startswith("_") and _info.name not in _FRAMEWORK:
        importlib.import_module(f"fedweave.methods.{_info.name}")
