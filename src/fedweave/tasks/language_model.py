"""Language modelling: the ``language_model`` task, character-level text data and a small
causal transformer.

Task (``task.kind: language_model``)
    Next-token prediction. The model maps token ids ``[B, L]`` to logits ``[B, L, V]``;
    the target ``[B, L]`` holds the next token of every position (``-100`` marks a
    position to ignore, as in ``torch.nn.functional.cross_entropy``).
    Loss: token cross-entropy, the mean over the (non-ignored) tokens of the batch.
    Metric: **perplexity** = exp(mean token cross-entropy), lower is better. ``evaluate``
    sums the token losses and the token counts over the whole split and only then takes
    the exponential, so the reported perplexity is exactly exp(test loss per token) —
    not a mean of per-batch or per-sequence perplexities. ``accuracy`` (next-token
    accuracy) is reported beside it. ``metric_sums`` returns ``loss`` (the sum over
    sequences of each sequence's mean token loss, so that the generic mean over examples
    is the mean token loss when every sequence has the same number of tokens, as the
    built-in data have) plus the raw sums ``token_nll``, ``tokens`` and ``correct`` that
    :meth:`LanguageModelTask.evaluate` turns into exact figures.
    ``per_example_score`` is the perplexity of each *sequence* (exp of its mean token
    loss). A client's figure (``eval.per_client``, ``eval.personalized``) is
    ``client_score``: exp of the mean per-sequence loss, the geometric mean of the
    sequences' perplexities — exactly the client's token-level perplexity when its
    sequences have equal lengths, as the built-in data have. The ``*_worst10`` figures
    take the *highest* perplexities (lower is better), i.e. the worst clients.

Data (``data.dataset: pydocs`` or ``pydocs:<L>``)
    Character-level text from the docstrings of Python standard-library modules, read
    from the source files of the running interpreter with :mod:`ast` (nothing is
    imported, downloaded or written). One *document* per module: the module docstring,
    then the docstrings of its public classes, functions and methods in source order,
    separated by blank lines. The vocabulary is fixed: id 0 = any other character,
    1 = newline, 2..96 = the printable ASCII characters 32..126 (97 tokens), so the number
    of classes does not depend on the text. Each document is cut into non-overlapping
    windows of L + 1 characters taken every L characters (L = 64 by default): the input is
    the first L characters, the target the last L (the input shifted by one). Sequences
    never cross documents.

    ``data.name`` picks the documents: ``federated`` (default) — 20 modules
    (:data:`FEDERATED_MODULES`, about 285k characters: 4,447 sequences of 64 with Python 3.11) — or
    ``public`` — 32 other modules (:data:`PUBLIC_MODULES`, about 210k characters) for
    centrally pretraining a base model before federated fine-tuning. Every sequence's
    natural client id and class label is its document, so ``data.partition.kind: natural``
    gives one client per module (clients differ in vocabulary and style: ``re`` talks
    about patterns, ``tarfile`` about archives), the test split is stratified by
    document, and the other partitioners (``iid``, ``dirichlet``...) deal out sequences
    by document.

    The text is deterministic for a given Python version, and changes between Python
    versions (docstrings are edited from release to release): results name the version.

Model (``model.name: transformer``)
    A GPT-style decoder: token and learned position embeddings, ``n_layers`` pre-norm
    blocks of causal multi-head self-attention (separate ``q``, ``k``, ``v``, ``o``
    ``nn.Linear`` projections, so LoRA can target them by name) and an MLP (``fc1``,
    GELU, ``fc2``), a final LayerNorm and an untied output layer ``lm_head``. Options
    (``model.kwargs``): ``d_model`` (64), ``n_layers`` (2), ``n_heads`` (4), ``d_ff``
    (4·d_model), ``dropout`` (0.0), ``init_from`` (a ``torch.save``'d ``state_dict`` of
    the same architecture, e.g. a centrally pretrained base; loaded with
    ``weights_only=True``, never downloaded). Weights start GPT-2 style (normal, std
    0.02; biases zero). ``model.width`` is not used. Built from these options only: no
    ``transformers`` model, no download.
"""

from __future__ import annotations

import ast
import math
import sysconfig
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError, DataError, ModelError
from ..core.task import Task
from ..data.sources import DataSource, register_source
from ..models import register_model
from .registry import register_task

IGNORE_INDEX = -100

# -- vocabulary ---------------------------------------------------------------------------

UNKNOWN, NEWLINE = 0, 1
VOCAB_SIZE = 2 + (126 - 32 + 1)  # unknown, newline, printable ASCII


def encode(text: str) -> np.ndarray:
    """Character ids (int64) of ``text`` under the fixed 97-token vocabulary."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    ids = np.full(codes.shape, UNKNOWN, dtype=np.int64)
    printable = (codes >= 32) & (codes <= 126)
    ids[printable] = codes[printable] - 32 + 2
    ids[codes == 10] = NEWLINE
    return ids


def decode(ids) -> str:
    """The text of character ids (unknown characters become '\ufffd')."""
    out = []
    for i in np.asarray(ids).reshape(-1).tolist():
        out.append("\n" if i == NEWLINE else chr(i - 2 + 32) if 2 <= i < VOCAB_SIZE else "\ufffd")
    return "".join(out)


# -- data -----------------------------------------------------------------------------------

#: The clients' documents (``data.name: federated``): stdlib source files, one per client.
FEDERATED_MODULES = (
    "argparse.py", "codecs.py", "configparser.py", "difflib.py", "doctest.py", "email/message.py",
    "imaplib.py", "inspect.py", "json/__init__.py", "logging/__init__.py", "optparse.py", "pdb.py",
    "re/__init__.py", "smtplib.py", "statistics.py", "subprocess.py", "tarfile.py", "threading.py",
    "typing.py", "unittest/case.py",
)
#: Documents for central pretraining (``data.name: public``), disjoint from the clients'.
PUBLIC_MODULES = (
    "ast.py", "http/client.py", "os.py", "shutil.py", "traceback.py", "urllib/parse.py", "socket.py",
    "collections/__init__.py", "_pydecimal.py", "pathlib.py", "random.py", "tempfile.py", "textwrap.py",
    "contextlib.py", "datetime.py", "calendar.py", "dataclasses.py", "functools.py", "enum.py", "zipfile.py",
    "ftplib.py", "base64.py", "timeit.py", "uuid.py", "mailbox.py", "cmd.py", "queue.py", "csv.py",
    "weakref.py", "heapq.py", "copy.py", "gzip.py",
)
DOCUMENT_GROUPS = {"federated": FEDERATED_MODULES, "public": PUBLIC_MODULES}
DEFAULT_SEQ_LEN = 64


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def module_docstrings(source: str) -> str:
    """The docstrings of a module's source: the module's, then those of its public classes,
    functions and methods (names without a leading underscore) in source order."""
    tree = ast.parse(source)
    parts: list[str] = []

    def visit(node, public: bool) -> None:
        doc = ast.get_docstring(node, clean=True)
        if doc and public:
            parts.append(doc)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, public and not child.name.startswith("_"))

    visit(tree, True)
    return "\n\n".join(parts)


def document_text(relpath: str) -> str:
    path = stdlib_dir() / relpath
    try:
        return module_docstrings(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        raise DataError(
            f"The 'pydocs' source reads the docstrings of {path}, which could not be read ({exc}). It needs the "
            "Python standard library's source files (.py), which some minimal installations strip."
        ) from None


def sequences(ids: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows of ``seq_len + 1`` ids every ``seq_len``: (inputs, next ids)."""
    count = max((len(ids) - 1) // seq_len, 0)
    if count == 0:
        return np.zeros((0, seq_len), np.int64), np.zeros((0, seq_len), np.int64)
    starts = np.arange(count)[:, None] * seq_len + np.arange(seq_len)[None, :]
    return ids[starts], ids[starts + 1]


def parse_seq_len(name: str) -> int:
    """``pydocs`` → 64; ``pydocs:<L>`` → L."""
    if name == "pydocs":
        return DEFAULT_SEQ_LEN
    tail = name.partition(":")[2]
    if not tail.isdigit() or not 2 <= int(tail) <= 4096:
        raise ConfigError(f"data.dataset {name!r}: write pydocs or pydocs:<sequence length>, a length from 2 to 4096.")
    return int(tail)


def pydocs_source(name: str = "pydocs", group: str | None = None):
    """The ``pydocs`` data source (see the module docstring)."""
    seq_len = parse_seq_len(name)
    group = group or "federated"
    if group not in DOCUMENT_GROUPS:
        raise ConfigError(f"data.name for the pydocs source must be one of {', '.join(DOCUMENT_GROUPS)}; got {group!r}.")
    xs, ys, docs = [], [], []
    for doc_id, rel in enumerate(DOCUMENT_GROUPS[group]):
        x, y = sequences(encode(document_text(rel)), seq_len)
        xs.append(x)
        ys.append(y)
        docs.append(np.full(len(x), doc_id, dtype=np.int64))
    doc_ids = np.concatenate(docs)
    empty = [rel for rel, d in zip(DOCUMENT_GROUPS[group], docs) if len(d) == 0]
    if empty:
        raise DataError(f"pydocs: the documents {empty} are shorter than one sequence of {seq_len}; use a shorter length.")
    return DataSource(
        name=name if group == "federated" else f"{name}/{group}",
        x_train=torch.from_numpy(np.concatenate(xs)),
        y_train=torch.from_numpy(np.concatenate(ys)),
        x_test=None,
        y_test=None,
        num_classes=VOCAB_SIZE,
        input_shape=(seq_len,),
        client_ids=doc_ids,
        labels=doc_ids,
    )


# -- task -------------------------------------------------------------------------------------


def _check_pair(output: torch.Tensor, target: torch.Tensor) -> None:
    if output.dim() != 3 or target.dim() != 2 or tuple(output.shape[:2]) != tuple(target.shape):
        raise ModelError(
            f"The language_model task needs logits shaped [batch, length, vocabulary] and next-token targets shaped "
            f"[batch, length]; got logits {tuple(output.shape)} and targets {tuple(target.shape)}. Use a sequence "
            "model (model.name: transformer) and text data (data.dataset: pydocs)."
        )


class LanguageModelTask(Task):
    """Token cross-entropy; perplexity = exp(mean token loss), lower is better."""

    def __init__(self):
        super().__init__("language_model", "perplexity", False)

    def check_output(self, output, target):
        _check_pair(output, target)

    def _token_nll(self, output, target):
        _check_pair(output, target)
        return F.cross_entropy(output.transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none")

    def loss(self, output, target):
        _check_pair(output, target)
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX)

    def per_example_loss(self, output, target):
        """Mean token loss of each sequence ``[B]``."""
        nll = self._token_nll(output, target)
        counts = (target != IGNORE_INDEX).sum(dim=1).clamp_min(1)
        return nll.sum(dim=1) / counts

    def per_example_score(self, output, target):
        """Perplexity of each sequence (float64 ``[B]``)."""
        return torch.exp(self.per_example_loss(output, target).detach().to(torch.float64))

    def client_score(self, per_example: torch.Tensor) -> float:
        """exp of the mean per-sequence loss: the client's perplexity (sequences have equal length)."""
        return float(torch.exp(torch.log(per_example).mean()))

    def metric_sums(self, output, target):
        nll = self._token_nll(output, target).detach().to(torch.float64)
        mask = target != IGNORE_INDEX
        correct = ((output.argmax(dim=-1) == target) & mask).sum()
        counts = mask.sum(dim=1).clamp_min(1)
        return {
            "loss": float((nll.sum(dim=1) / counts).sum()),
            "token_nll": float(nll.sum()),
            "tokens": float(mask.sum()),
            "correct": float(correct),
        }

    @torch.no_grad()
    def evaluate(self, model, x, y, batch_size: int = 2048):
        """Exact figures over the whole split: ``loss`` = token NLL sum / token count,
        ``perplexity`` = exp(loss), ``accuracy`` = correct next tokens / token count."""
        was_training = model.training
        model.eval()
        nll = tokens = correct = 0.0
        for start in range(0, len(y), batch_size):
            sums = self.metric_sums(model(x[start : start + batch_size]), y[start : start + batch_size])
            nll += sums["token_nll"]
            tokens += sums["tokens"]
            correct += sums["correct"]
        model.train(was_training)
        loss = nll / max(tokens, 1.0)
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "accuracy": correct / max(tokens, 1.0)}


register_task(
    "language_model", LanguageModelTask,
    "token cross-entropy; perplexity = exp(mean token loss) (lower is better); data pydocs, model transformer",
)


register_source(
    "pydocs", lambda name, o: pydocs_source(name, o.data_name), pattern=r"pydocs(:.*)?",
    description="character-level text (97 tokens) from the docstrings of Python stdlib modules, one document "
    "(natural client) per module; pydocs:<L> for sequences of L (default 64); data.name federated | public "
    "(task.kind language_model)",
)


# -- model ------------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.o = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.n_heads

        def heads(z):
            return z.view(b, t, h, d // h).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.q(x)), heads(self.k(x)), heads(self.v(x)),
            dropout_p=self.dropout if self.training else 0.0, is_causal=True,
        )
        return self.o(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x)))))


class CausalTransformer(nn.Module):
    """A small GPT-style decoder: ``[B, L]`` token ids → ``[B, L, vocab]`` logits."""

    def __init__(self, vocab_size: int, max_len: int, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                 d_ff: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.max_len = max_len
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_ff or 4 * d_model, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():
            x = x.long()
        t = x.shape[1]
        if t > self.max_len:
            raise ModelError(f"The transformer was built for sequences of at most {self.max_len} tokens, got {t}.")
        h = self.tok(x) + self.pos(torch.arange(t, device=x.device))
        for block in self.blocks:
            h = block(h)
        return self.lm_head(self.norm(h))


_OPTIONS = ("d_model", "n_layers", "n_heads", "d_ff", "dropout", "init_from")


def build_transformer(input_shape, num_classes, width=None, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                      d_ff: int | None = None, dropout: float = 0.0, init_from: str | None = None,
                      **unused) -> nn.Module:
    if unused:
        raise ModelError(f"Unexpected option(s) for model 'transformer': {', '.join(sorted(unused))}. "
                         f"Its options (model.kwargs): {', '.join(_OPTIONS)}.")
    if len(input_shape) != 1:
        raise ModelError(f"Model 'transformer' needs token sequences shaped (length,), got input shape "
                         f"{tuple(input_shape)}. Use text data (data.dataset: pydocs).")
    for key, value in (("d_model", d_model), ("n_layers", n_layers), ("n_heads", n_heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"transformer {key} must be a positive integer, got {value!r}.")
    if d_model % n_heads:
        raise ModelError(f"transformer d_model ({d_model}) must be divisible by n_heads ({n_heads}).")
    if d_ff is not None and (isinstance(d_ff, bool) or not isinstance(d_ff, int) or d_ff < 1):
        raise ModelError(f"transformer d_ff must be a positive integer, got {d_ff!r}.")
    if not 0 <= float(dropout) < 1:
        raise ModelError(f"transformer dropout must be in [0, 1), got {dropout!r}.")
    model = CausalTransformer(int(num_classes), int(input_shape[0]), d_model, n_layers, n_heads, d_ff, float(dropout))
    if init_from is not None:
        load_weights(model, init_from)
    return model


def load_weights(model: nn.Module, path: str) -> None:
    """Load a ``torch.save``'d ``state_dict`` (tensors only) into ``model``, strictly."""
    try:
        state = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise ModelError(f"model.kwargs.init_from: could not read {path}: {exc}") from None
    if not isinstance(state, dict):
        raise ModelError(f"model.kwargs.init_from: {path} holds a {type(state).__name__}, not a state_dict.")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"model.kwargs.init_from: {path} does not fit this transformer's options: {exc}") from None


register_model(
    "transformer",
    build_transformer,
    "Small causal (GPT-style) transformer for the language_model task: model.kwargs d_model 64, n_layers 2, "
    "n_heads 4, d_ff, dropout, init_from (a saved state_dict).",
)

__all__ = [
    "CausalTransformer", "LanguageModelTask", "VOCAB_SIZE", "FEDERATED_MODULES", "PUBLIC_MODULES", "build_transformer",
    "decode", "encode", "load_weights", "module_docstrings", "pydocs_source", "sequences",
]
