"""Real models from local files: ``torchvision:<name>`` and ``hf:<folder>``. Nothing is
ever downloaded.

``model.name: torchvision:<name>`` (``pip install "fedweave[vision]"``)
    A torchvision classification model (``torchvision.models.list_models``: ``resnet18``,
    ``mobilenet_v3_small``...) built with random weights and ``num_classes`` from the data.
    ``model.kwargs.weights_path`` loads a local ``state_dict`` (``torch.save(model.state_dict(),
    path)``; read with ``weights_only=True``). Every tensor of the file must have the shape
    of the model's tensor of the same name, or the run is refused naming the mismatches;
    ``model.kwargs.weights_strict: false`` allows keys missing from the file (e.g. an
    ImageNet state_dict saved without its 1000-class ``fc``, so that the head starts fresh).
    Other ``model.kwargs`` go to the torchvision builder (``width_per_group``...);
    torchvision's own ``weights=`` is refused because it downloads.

``model.name: hf:<folder>`` (``pip install "fedweave[lora]"``, which brings ``transformers``)
    A folder written by ``save_pretrained``, read with ``local_files_only=True``. The head
    follows the task and the data: ``task.kind: language_model`` → ``AutoModelForCausalLM``
    (token ids ``[B, L]`` → logits ``[B, L, vocab]``; the data's token ids go straight in,
    so the model's vocabulary must be at least the data's, and its context at least the
    sequence length); ``classification`` of images ``[C, H, W]`` →
    ``AutoModelForImageClassification`` (``pixel_values``); ``classification`` of token
    sequences ``[L]`` → ``AutoModelForSequenceClassification`` (attention mask: the tokens
    that are not the config's ``pad_token_id``). Classifiers get ``num_labels`` = the
    data's classes; a saved head of another size is replaced by a fresh one
    (``ignore_mismatched_sizes``), as in any fine-tuning. Weights load in float32 (the
    flat parameter vector holds one dtype and aggregation runs in fp32). The model is
    wrapped in :class:`HFLogits`, so the task sees plain logits.

**LoRA targets.** Each builder records the default ``peft`` target patterns of its
architecture in the module's ``lora_targets`` attribute, which ``method: plora`` uses when
``method.target`` is not given (:data:`HF_LORA_TARGETS`, :data:`TORCHVISION_LORA_TARGETS`).
"""

from __future__ import annotations

import contextlib
import difflib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedweave.core.errors import ConfigError, DataError, ModelError

TORCHVISION_PREFIX = "torchvision:"
HF_PREFIX = "hf:"

#: Default LoRA target patterns (fnmatch over module names) per Hugging Face ``model_type``:
#: the attention projections that LoRA (Hu et al. 2021) adapts — query and value.
HF_LORA_TARGETS: dict[str, list[str]] = {
    "gpt2": ["*c_attn"],
    "gpt_neox": ["*query_key_value"],
    "llama": ["*q_proj", "*v_proj"],
    "mistral": ["*q_proj", "*v_proj"],
    "qwen2": ["*q_proj", "*v_proj"],
    "opt": ["*q_proj", "*v_proj"],
    "bert": ["*attention.self.query", "*attention.self.value"],
    "roberta": ["*attention.self.query", "*attention.self.value"],
    "distilbert": ["*q_lin", "*v_lin"],
    # transformers 4 names ViT's projections attention.attention.query/value, 5 attention.q_proj/v_proj
    "vit": ["*attention.attention.query", "*attention.attention.value", "*attention.q_proj", "*attention.v_proj"],
}
#: Default LoRA targets per torchvision family (name prefix): the residual blocks'
#: convolutions and the classifier for ResNets; the linear layers elsewhere.
TORCHVISION_LORA_TARGETS: dict[str, list[str]] = {
    "resnet": ["layer*.conv1", "layer*.conv2", "fc"],
    "resnext": ["layer*.conv1", "layer*.conv2", "fc"],
    "wide_resnet": ["layer*.conv1", "layer*.conv2", "fc"],
    "vit": ["*self_attention.out_proj", "*mlp.0", "*mlp.3"],
}


def is_hub_name(name: str) -> bool:
    return isinstance(name, str) and (name.startswith(TORCHVISION_PREFIX) or name.startswith(HF_PREFIX))


# -- state_dict files ------------------------------------------------------------------------


def load_state_dict_checked(model: nn.Module, path: str, strict: bool = True, where: str = "model.kwargs.weights_path") -> None:
    """Load a local ``state_dict`` into ``model``; shape mismatches (and, when ``strict``,
    missing or unexpected keys) are a :class:`ModelError` that names them."""
    file = Path(str(path)).expanduser()
    if not file.is_file():
        raise ModelError(f"{where}: {file} does not exist or is not a file. Give the path of a state_dict saved "
                         "with torch.save(model.state_dict(), path).")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle of other objects, a truncated file...
        raise ModelError(f"{where}: could not read {file} as a state_dict of tensors ({type(exc).__name__}: {exc}).") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{where}: {file} holds a {type(state).__name__}, not a state_dict (a dict of tensors).")
    own = model.state_dict()
    mismatched = [f"{k}: file {tuple(v.shape)}, model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    problems = []
    if mismatched:
        problems.append(f"shapes differ for {len(mismatched)} tensor(s) ({'; '.join(mismatched[:5])}"
                        f"{'; ...' if len(mismatched) > 5 else ''})")
    if unexpected:
        problems.append(f"the model has no tensor(s) {', '.join(unexpected[:5])}{', ...' if len(unexpected) > 5 else ''}")
    if strict and missing:
        problems.append(f"the file lacks {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}")
    if problems:
        raise ModelError(
            f"{where}: {file} does not fit the model: {'; '.join(problems)}. The file must be a state_dict of this "
            "architecture with the data's number of classes; to start a head afresh, save the state_dict without "
            "the head's entries and set model.kwargs.weights_strict: false."
        )
    model.load_state_dict(state, strict=False)


# -- torchvision ------------------------------------------------------------------------------


def _torchvision_models():
    try:
        import torchvision.models as tvm
    except ImportError:
        raise ConfigError('model.name torchvision:<name> needs torchvision: pip install "fedweave[vision]" '
                          "(the release that matches your torch).") from None
    except Exception as exc:  # e.g. a CUDA build of torchvision beside a CPU build of torch
        raise ConfigError(f"torchvision is installed but cannot be imported ({type(exc).__name__}: {exc}); install "
                          "the build that matches your torch (for a CPU torch, the +cpu torchvision wheel).") from None
    return tvm


def torchvision_names() -> list[str]:
    """The classification models torchvision can build."""
    tvm = _torchvision_models()
    return sorted(tvm.list_models(module=tvm))


def build_torchvision(arch: str, input_shape: tuple[int, ...], num_classes: int, *, weights_path: str | None = None,
                      weights_strict: bool = True, **kwargs: Any) -> nn.Module:
    """A torchvision classifier with random weights, or those of ``weights_path``."""
    tvm = _torchvision_models()
    names = sorted(tvm.list_models(module=tvm))
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=3)
        raise ConfigError(
            f"model.name 'torchvision:{arch}': torchvision has no classification model {arch!r}"
            f"{' (did you mean ' + ', '.join(close) + '?)' if close else ''}. Allowed: {', '.join(names)}."
        )
    if "weights" in kwargs or "pretrained" in kwargs:
        raise ConfigError("model.kwargs.weights / pretrained would download weights; fedweave reads local files "
                          "only: save a state_dict and give its path as model.kwargs.weights_path.")
    if len(input_shape) != 3:
        raise ModelError(f"model 'torchvision:{arch}' needs images shaped (channels, height, width); the data has "
                         f"input shape {tuple(input_shape)}.")
    try:
        model = tvm.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"model.kwargs for torchvision:{arch}: {exc}.") from None
    if weights_path is not None:
        load_state_dict_checked(model, weights_path, strict=bool(weights_strict))
    family = next((f for f in sorted(TORCHVISION_LORA_TARGETS, key=len, reverse=True) if arch.startswith(f)), None)
    if family is not None:
        model.lora_targets = list(TORCHVISION_LORA_TARGETS[family])
    return model


# -- Hugging Face -------------------------------------------------------------------------------


class HFLogits(nn.Module):
    """A ``transformers`` model that maps fedweave's input tensor to plain logits."""

    def __init__(self, model: nn.Module, kind: str, pad_token_id: int | None = None):
        super().__init__()
        self.model = model
        self.kind = kind
        self.pad_token_id = pad_token_id

    def check_inputs(self, x: torch.Tensor, model_name: str) -> None:
        """Token ids in, for a language or sequence model: whole numbers from 0 to the
        vocabulary's size − 1 (``forward`` casts them to integers, which would silently
        truncate real-valued features such as word counts or embeddings)."""
        if self.kind == "image" or not len(x):
            return
        vocab = getattr(self.model.config, "vocab_size", None)
        if x.is_floating_point() and not torch.equal(x, x.round()):
            raise DataError(f"model.name {model_name!r} reads token ids, but the data's inputs are real-valued "
                            f"({x.dtype}, e.g. {float(x[x != x.round()][0]):g}); they would be truncated to integers. "
                            "Give text tokenised into ids (the hf source with a tokenizer, or pydocs), or a model "
                            "that reads features.")
        low, high = int(x.min()), int(x.max())
        if low < 0 or (vocab is not None and high >= vocab):
            raise DataError(f"model.name {model_name!r} reads token ids from 0 to {vocab - 1 if vocab else '…'}, but the "
                            f"data's inputs run from {low} to {high}. Tokenise the text with this model's tokenizer.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "image":
            return self.model(pixel_values=x).logits
        ids = x.long()
        if self.kind == "sequence" and self.pad_token_id is not None:
            return self.model(input_ids=ids, attention_mask=(ids != self.pad_token_id).long()).logits
        return self.model(input_ids=ids).logits


def _hf_kind(task: str, input_shape: tuple[int, ...], folder: str) -> str:
    if task == "language_model":
        return "causal"
    if task == "classification" and len(input_shape) == 3:
        return "image"
    if task == "classification" and len(input_shape) == 1:
        return "sequence"
    raise ConfigError(
        f"model.name 'hf:{folder}': a Hugging Face model serves task.kind language_model (token sequences) or "
        f"classification of images [C, H, W] or token sequences [L]; got task {task!r} with input shape "
        f"{tuple(input_shape)}."
    )


@contextlib.contextmanager
def _quiet(transformers):
    """No progress bars or load reports from transformers while a model is read (the CLI's output stays fedweave's)."""
    log = transformers.utils.logging
    level, bars = log.get_verbosity(), log.is_progress_bar_enabled()
    log.set_verbosity_error()
    log.disable_progress_bar()
    try:
        yield
    finally:
        log.set_verbosity(level)
        if bars:
            log.enable_progress_bar()


def _check_loaded(where: str, path: Path, model: nn.Module, info: dict[str, Any], fresh_head: bool) -> None:
    """Refuse weights that do not fit ``config.json``: tensors of another shape, or tensors
    the file lacks. A classifier's head (the parameters outside ``base_model_prefix``) may
    be missing or of another size — it starts afresh for the data's classes; the body may
    not, or the "pretrained" model would be partly random without a word."""
    prefix = getattr(model, "base_model_prefix", "") or ""

    def in_body(key: str) -> bool:
        return not fresh_head or not prefix or key == prefix or key.startswith(prefix + ".")

    mismatched = [f"{k}: file {tuple(old)}, config {tuple(new)}"
                  for k, old, new in info.get("mismatched_keys", []) if in_body(k)]
    missing = sorted(k for k in info.get("missing_keys", []) if in_body(k))
    problems = []
    if mismatched:
        problems.append(f"shapes differ for {len(mismatched)} tensor(s) ({'; '.join(sorted(mismatched)[:5])}"
                        f"{'; ...' if len(mismatched) > 5 else ''})")
    if missing:
        problems.append(f"the weights lack {len(missing)} tensor(s) ({', '.join(missing[:5])}"
                        f"{', ...' if len(missing) > 5 else ''})")
    if problems:
        raise ConfigError(f"{where}: the weights in {path} do not fit its config.json: {'; '.join(problems)}. "
                          "config.json and the weights must come from one save_pretrained of one model"
                          f"{' (only a classifier head may differ: it starts afresh)' if fresh_head else ''}.")


def build_hf(folder: str, input_shape: tuple[int, ...], num_classes: int, *, task: str = "classification",
             **kwargs: Any) -> nn.Module:
    """The ``save_pretrained`` model in ``folder`` with the head of ``task``, wrapped in :class:`HFLogits`."""
    where = f"model.name 'hf:{folder}'"
    path = Path(folder).expanduser()
    if not folder or not path.is_dir():
        raise ConfigError(f"{where}: the folder {path} does not exist. Give a folder written by save_pretrained "
                          "(it holds config.json and the weights); nothing is downloaded.")
    if not (path / "config.json").is_file():
        raise ConfigError(f"{where}: {path} holds no model (no config.json). Give a folder written by a "
                          "transformers model's save_pretrained.")
    if kwargs:
        raise ConfigError(f"{where}: unexpected model.kwargs {', '.join(sorted(kwargs))}; Hugging Face models take "
                          "none (the folder's config.json holds the architecture).")
    try:
        import transformers
    except ImportError:
        raise ConfigError(f'{where} needs transformers: pip install "fedweave[lora]".') from None
    kind = _hf_kind(task, tuple(input_shape), folder)
    try:
        with _quiet(transformers):  # its warnings about the config (e.g. token ids beyond the vocabulary) too
            config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise ConfigError(f"{where}: {path}/config.json is not a transformers config ({type(exc).__name__}: "
                          f"{str(exc)[:200]}).") from None
    options: dict[str, Any] = {"local_files_only": True, "dtype": torch.float32}
    if kind == "causal":
        vocab = getattr(config, "vocab_size", None)
        if vocab is not None and vocab < num_classes:
            raise ConfigError(
                f"{where}: the model's vocabulary has {vocab} tokens but the data's token ids run to {num_classes - 1}; "
                f"the ids go straight in, so the vocabulary must hold at least {num_classes} tokens. Use a model with a "
                "larger vocabulary, or text tokenised with this model's tokenizer."
            )
        context = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        if context is not None and input_shape[0] > context:
            raise ConfigError(f"{where}: the model reads at most {context} tokens, the data's sequences have "
                              f"{input_shape[0]}; use shorter sequences (pydocs:<L>).")
        auto = transformers.AutoModelForCausalLM
    else:
        options.update(num_labels=int(num_classes), ignore_mismatched_sizes=True)
        auto = (transformers.AutoModelForImageClassification if kind == "image"
                else transformers.AutoModelForSequenceClassification)
    # mismatched tensors are reported (and then refused below unless they are a classifier's
    # head), not raised as a bare RuntimeError in the middle of transformers' load report
    options.update(ignore_mismatched_sizes=True, output_loading_info=True)
    try:
        with _quiet(transformers):
            model, info = auto.from_pretrained(str(path), **options)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ConfigError(f"{where}: could not load a {auto.__name__} from {path} ({type(exc).__name__}: "
                          f"{str(exc)[:300]}). The folder must hold config.json and the weights "
                          "(model.safetensors or pytorch_model.bin) of a model of that kind.") from None
    _check_loaded(where, path, model, info, fresh_head=kind != "causal")
    pad = getattr(model.config, "pad_token_id", None)
    wrapped = HFLogits(model, kind, pad if kind == "sequence" else None)
    targets = HF_LORA_TARGETS.get(getattr(config, "model_type", ""), None)
    if targets is not None:
        wrapped.lora_targets = list(targets)
    return wrapped


def build_hub_model(name: str, input_shape: tuple[int, ...], num_classes: int, **kwargs: Any) -> nn.Module:
    """``torchvision:<name>`` or ``hf:<folder>`` (see the module docstring)."""
    if name.startswith(TORCHVISION_PREFIX):
        kwargs.pop("task", None)
        return build_torchvision(name[len(TORCHVISION_PREFIX):], input_shape, num_classes, **kwargs)
    return build_hf(name[len(HF_PREFIX):], input_shape, num_classes, **kwargs)
