"""Compatibility path: the language-model task bundle is :mod:`fedweave.tasks.language_model`
(this name is the same module object, so its attributes can be read and patched here)."""

import sys

from .tasks import language_model

sys.modules[__name__] = language_model
