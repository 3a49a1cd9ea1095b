"""Model registry: build a ``torch.nn.Module`` by name for a given input shape.

``build_model(name, input_shape, num_classes)`` builds one of the models in :data:`MODELS`
(see :mod:`fedweave.models.zoo` for the architectures and the papers behind them), or a
user model given by import path ``"package.module:factory"``. The factory is called as::

    factory(input_shape=input_shape, num_classes=num_classes, **kwargs)

where ``kwargs`` are the extra keyword arguments given to :func:`build_model` (the built-in
options ``hidden``, ``norm`` and ``width`` are not passed on). It must return an
``nn.Module`` that maps a batch ``[B, *input_shape]`` to logits ``[B, num_classes]``.

``torchvision:<name>`` and ``hf:<folder>`` build real models from local files (see
:mod:`fedweave.models.hub`).

Weights use PyTorch's default initialisation; seed torch before calling ``build_model``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from typing import Any

from torch import nn

from fedweave.core.errors import ConfigError, FedweaveError, ModelError, unknown_name
from fedweave.core.registration import claim
from fedweave.models.hub import build_hub_model, is_hub_name
from fedweave.models.zoo import (
    build_cnn,
    build_lenet5,
    build_logistic,
    build_mlp,
    build_mlp_norm,
    build_resnet,
    group_count,
)

__all__ = ["MODELS", "NORMS", "IMAGE_MODELS", "DEFAULT_HIDDEN", "build_model", "group_count"]

MODELS: dict[str, str] = {
    "logistic": "Multinomial logistic regression: flatten + one linear layer.",
    "mlp": "Fully connected ReLU network, hidden sizes from `hidden` "
    "(default [200, 200]: the 2NN of McMahan et al. 2017).",
    "mlp_norm": "mlp with a normalisation layer after each hidden linear layer (norm batch|group|none).",
    "cnn": "CNN of McMahan et al. 2017: conv5x5(32)-pool, conv5x5(64)-pool, fc512, fc.",
    "lenet5": "LeNet-5 (LeCun et al. 1998): conv6-5x5, pool, conv16-5x5, pool, fc120, fc84, fc.",
    "resnet": "ResNet-8: stem conv, 3 BasicBlock stages (width, 2w, 4w), avg pool, fc; "
    "norm group|batch|none.",
}

#: Models registered by other modules with :func:`register_model`, kept apart from
#: :data:`MODELS` because they are not classifiers (fedweave.restoration's ``srnet`` maps
#: images to images): name -> (factory(input_shape, num_classes, width=..., **kwargs), description).
EXTRA_MODELS: dict[str, tuple[Any, str]] = {}
#: Set-up hooks of registered models, ``(experiment) -> None``, run by
#: ``fedweave.experiment.build_experiment`` before the method's own set-up whatever the
#: method (``ssf_pool`` pretrains its frozen backbone on the server's split).
MODEL_SETUPS: dict[str, Any] = {}


def register_model(name: str, factory: Any, description: str, setup: Any = None, replace: bool = False) -> None:
    """Make ``factory`` buildable as ``model.name: <name>``; ``setup(experiment)``, if
    given, runs once the experiment that uses the model is built (pretraining...).
    Registering a name twice is an error unless ``replace`` is true (a built-in model
    cannot be replaced)."""
    if name in MODELS:
        raise ValueError(f"model {name!r} registered twice: it is built in and cannot be replaced; choose another name.")
    claim("model", name, EXTRA_MODELS, replace)
    EXTRA_MODELS[name] = (factory, description)
    if setup is not None:
        MODEL_SETUPS[name] = setup


def setup_model(exp) -> None:
    """Run the set-up hook of the experiment's model (see :func:`register_model`), if any."""
    setup = MODEL_SETUPS.get(exp.config.model.name)
    if setup is not None:
        setup(exp)


#: Models that need ``(channels, height, width)`` input.
IMAGE_MODELS = frozenset({"cnn", "lenet5", "resnet"})
#: Models that flatten any input shape.
FLAT_MODELS = ("logistic", "mlp", "mlp_norm")
NORMS = ("group", "batch", "none")
DEFAULT_HIDDEN = (200, 200)
#: ``model.width`` when it is not set (see :func:`build_model` for the models that decide their own)
DEFAULT_WIDTH = 16
_NO_WIDTH = inspect.Parameter("width", inspect.Parameter.KEYWORD_ONLY, default=0)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_shape(input_shape: Sequence[int], num_classes: int) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not shape or not all(_is_int(s) and s > 0 for s in shape):
        raise ConfigError(
            f"input_shape must be a non-empty tuple of positive integers, got {input_shape!r}."
        )
    if not _is_int(num_classes) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}.")
    return shape


def _check_hidden(hidden: Sequence[int] | None) -> tuple[int, ...]:
    if hidden is None:
        return DEFAULT_HIDDEN
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise ConfigError(f"hidden must be a list of positive integers, got {hidden!r}.")
    if not all(_is_int(h) and h > 0 for h in hidden):
        raise ConfigError(f"hidden sizes must be positive integers, got {list(hidden)!r}.")
    # An empty list is allowed: an MLP without hidden layers is logistic regression.
    return tuple(hidden)


def _load_factory(path: str):
    module_name, _, attr_path = path.partition(":")
    if not module_name or not attr_path:
        raise ModelError(
            f"Model path {path!r} must have the form 'package.module:factory'."
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or any error raised while importing it
        raise ModelError(
            f"Cannot import module {module_name!r} for model {path!r}: "
            f"{type(err).__name__}: {err}"
        ) from err
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as err:
            raise ModelError(
                f"Model factory {path!r} not found: {module_name!r} has no attribute "
                f"{attr_path!r}."
            ) from err
    if not callable(obj):
        raise ModelError(f"Model factory {path!r} is not callable.")
    return obj


def _build_user_model(
    path: str, input_shape: tuple[int, ...], num_classes: int, kwargs: dict[str, Any]
) -> nn.Module:
    factory = _load_factory(path)
    try:
        model = factory(input_shape=input_shape, num_classes=num_classes, **kwargs)
    except FedweaveError:
        raise  # already typed and explained by the factory
    except Exception as err:
        raise ModelError(
            f"Model factory {path!r} failed: {type(err).__name__}: {err}. It is called as "
            "factory(input_shape=..., num_classes=..., **options)."
        ) from err
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"Model factory {path!r} returned {type(model).__name__}, not a torch.nn.Module."
        )
    return model


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    hidden: list[int] | None = None,
    norm: str = "group",
    width: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build model ``name`` for inputs of shape ``input_shape`` (without the batch dim).

    ``hidden`` sets the MLP's hidden sizes (default ``[200, 200]``); ``norm`` (``group``,
    ``batch`` or ``none``) configures the ResNet and ``mlp_norm``, ``width`` (channels of
    the first stage) the ResNet. ``width`` None (``model.width`` unset) means
    :data:`DEFAULT_WIDTH`, except for a registered model whose factory's own ``width``
    default is None: that factory decides (``vlm`` follows its pretrained base).
    Options that a model does not use are ignored. ``kwargs`` are only for user factories
    (``"package.module:factory"``); built-in models reject them.

    Raises :class:`ConfigError` for unknown names and invalid options, and
    :class:`ModelError` when the model does not fit the input or a user factory fails.
    """
    shape = _check_shape(input_shape, num_classes)
    hidden_sizes = _check_hidden(hidden)
    if is_hub_name(name):  # torchvision:<name>, hf:<folder> (models/hub.py)
        return build_hub_model(name, shape, num_classes, **kwargs)
    if isinstance(name, str) and ":" in name:
        return _build_user_model(name, shape, num_classes, kwargs)
    if name in EXTRA_MODELS:
        factory = EXTRA_MODELS[name][0]
        if hidden is not None and "hidden" in inspect.signature(factory).parameters:
            kwargs["hidden"] = hidden_sizes  # e.g. the backbone of fedins' ssf_pool
        if width is None and inspect.signature(factory).parameters.get("width", _NO_WIDTH).default is not None:
            width = DEFAULT_WIDTH
        return factory(shape, num_classes, width=width, **kwargs)
    if name not in MODELS:
        raise unknown_name("model", str(name), {**MODELS, **EXTRA_MODELS})
    if kwargs:
        raise ConfigError(
            f"Unexpected option(s) for model {name!r}: {', '.join(sorted(kwargs))}. Extra "
            "options are passed only to user factories ('package.module:factory')."
        )
    if norm not in NORMS:
        raise ConfigError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}.")
    width = DEFAULT_WIDTH if width is None else width
    if not _is_int(width) or width < 1:
        raise ConfigError(f"width must be a positive integer, got {width!r}.")

    if name == "logistic":
        return build_logistic(shape, num_classes)
    if name == "mlp":
        return build_mlp(shape, num_classes, hidden_sizes)
    if name == "mlp_norm":
        return build_mlp_norm(shape, num_classes, hidden_sizes, norm)
    if len(shape) != 3:
        raise ModelError(
            f"Model {name!r} needs image input shaped (channels, height, width), but the "
            f"data has input shape {shape}. Models for this input: {', '.join(FLAT_MODELS)}."
        )
    if name == "cnn":
        return build_cnn(shape, num_classes)  # type: ignore[arg-type]
    if name == "lenet5":
        return build_lenet5(shape, num_classes)  # type: ignore[arg-type]
    return build_resnet(shape, num_classes, width, norm)  # type: ignore[arg-type]
