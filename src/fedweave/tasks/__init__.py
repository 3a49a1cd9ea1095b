"""Tasks: what a model is trained for, and the bundles that come with each.

A *task bundle* is one module that registers, together, what only makes sense together:
its task (:func:`register_task`: loss, metrics, primary metric), its data sources
(:func:`fedweave.data.register_source`) and its models (:func:`fedweave.models.register_model`).

==================  =====================================================================
``classification``  the default: cross-entropy, accuracy; the built-in sources and models
``restoration``     Charbonnier loss, PSNR; data ``sr<k>:<source>``; model ``srnet``
``language_model``  token cross-entropy, perplexity; data ``pydocs[:<L>]``; model ``transformer``
``regression``      MSE, relative L2 error and RMSE; data ``burgers1d[:C[:R[:S]]]``; model ``fno1d``
``video_sr``        Charbonnier loss, PSNR-Y and SSIM-Y; data ``clips[:<window>]``; models ``vsrnet``, ``vsrrnn``
(``skeleton``)      no task of its own (classification): data ``skeleton[:<clients>]``; model ``stgcn``
(``vision_language``) no task of its own (classification over answers): data ``shapesvqa[:<clients>]``; model ``vlm``
==================  =====================================================================

Methods and metrics ask the task, never the dataset. The task contract itself,
:class:`~fedweave.core.task.Task`, is in :mod:`fedweave.core.task`.
"""

from ..core.task import Task
from .registry import TASKS, make_task, register_task

# every bundle registers itself when imported (this order is the order of TASKS)
from . import classification  # noqa: E402,F401
from . import restoration  # noqa: E402,F401
from . import language_model  # noqa: E402,F401
from . import turbulence  # noqa: E402,F401
from . import skeleton  # noqa: E402,F401
from . import video_sr  # noqa: E402,F401
from . import video_sr_recurrent  # noqa: E402,F401
from . import vision_language  # noqa: E402,F401
from .classification import ClassificationTask  # noqa: E402

__all__ = ["TASKS", "Task", "ClassificationTask", "make_task", "register_task"]
