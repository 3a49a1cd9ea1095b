"""Compatibility path: the restoration task bundle is :mod:`fedweave.tasks.restoration`
(this name is the same module object, so its attributes can be read and patched here)."""

import sys

from .tasks import restoration

sys.modules[__name__] = restoration
