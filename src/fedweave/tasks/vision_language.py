"""A small vision-language task: the ``shapesvqa`` data source and the ``vlm`` model.

The task is ``classification`` over the answer vocabulary: the model reads an image and a
question and its text decoder emits the one-word answer (cross-entropy on the answer
token, accuracy = exact-match VQA accuracy). This bundle registers the data and the model.

Data (``data.dataset: shapesvqa``, ``shapesvqa:<clients>`` or ``shapesvqa:<clients>:dialect``, default 8 clients; use
``data.partition.kind: natural``)
    Made offline and deterministically from ``data.seed``. An image is 16×16 RGB: 1–3
    copies of one shape (square, cross, bar) in one colour (red, green, blue, yellow),
    placed in distinct 4×4 cells of one quadrant (top-left, top-right, bottom-left,
    bottom-right), with Gaussian pixel noise σ = 0.05. A question is 4 tokens of one of
    four types (:data:`QUESTIONS`): colour ("what colour is it"), shape ("what shape is
    it"), position ("where is it ?") and count ("how many are there"); its answer is one
    of 14 words (:data:`ANSWERS`). An example is the flat float vector
    ``[image (3·16·16 values), question token ids (4 values)]`` — one tensor, as every
    fedweave data set is; the label is the answer's index.

    Clients are non-IID by question type and by attribute: client c asks its own type
    (c mod 4) with probability :data:`TYPE_SKEW` = 0.7 (else a uniform type), and draws
    the colour from its own pair {c mod 4, (c+1) mod 4} with probability
    :data:`COLOUR_SKEW` = 0.8 (else a uniform colour); shape, position and count are
    uniform. 150 examples per client.

    ``shapesvqa:<clients>:dialect`` adds a *conditional* shift: the odd-numbered clients
    answer in another convention (each answer replaced by the next word of its group,
    cyclically: red → green, square → cross, one → two, …) — a synthetic stand-in for
    clients whose preferred answers differ (as preference data such as RLAIF-V may), where
    one shared model cannot be right for everyone.

    :func:`public_split` makes a disjoint, balanced *public* set (other seeds) of colour
    and shape questions only, on which :func:`pretrain_vlm` trains the base model that
    federated LoRA then adapts — the position and count questions are new to it, as a
    downstream task is new to a pretrained VLM.

Model (``model.name: vlm``)
    Image encoder: two stride-2 3×3 convolutions (3 → 16 → d channels, ReLU) giving 16
    image tokens, a linear projection ``img_proj``. Text decoder: token and position
    embeddings, ``n_layers`` (default 2) pre-LayerNorm transformer blocks over [image
    tokens; question tokens] (attention projections ``attn.q/k/v/o``, MLP ``mlp.fc1/fc2``,
    all ``nn.Linear`` — what LoRA adapts), a final LayerNorm and ``lm_head`` (d → 14
    answer tokens) read at the last question token. ``model.width`` is d: unset, the
    width of the base ``init_from`` (read from its ``img_proj``), else 32; a width the
    base does not have is a ConfigError. ``model.kwargs``: ``n_layers``, ``n_heads`` (2),
    ``init_from`` (a saved ``state_dict``, e.g. from :func:`pretrain_vlm`).
"""

from __future__ import annotations

import pickle

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError, DataError, ModelError
from ..core.rng import derive_seed
from ..data.sources import DataSource, SourceOptions, register_source
from ..models import register_model

SIDE = 16
PIXELS = 3 * SIDE * SIDE
QUESTION_LEN = 4
COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("square", "cross", "bar")
POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right")
COUNTS = ("one", "two", "three")
ANSWERS = COLOURS + SHAPES + POSITIONS + COUNTS
QUESTIONS = {
    "colour": ("what", "colour", "is", "it"),
    "shape": ("what", "shape", "is", "it"),
    "position": ("where", "is", "it", "?"),
    "count": ("how", "many", "are", "there"),
}
QUESTION_TYPES = tuple(QUESTIONS)
WORDS = tuple(dict.fromkeys(w for q in QUESTIONS.values() for w in q))
TYPE_SKEW = 0.7
COLOUR_SKEW = 0.8
PER_CLIENT = 150
DEFAULT_VLM_WIDTH = 32
_RGB = np.array([[1.0, 0.1, 0.1], [0.1, 0.9, 0.1], [0.15, 0.3, 1.0], [1.0, 0.9, 0.1]])
_SPRITES = {
    "square": np.ones((3, 3)),
    "cross": np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=float),
    "bar": np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0]], dtype=float),
}


def render(rng, colour: int, shape: int, position: int, count: int) -> np.ndarray:
    """The image ``[3, 16, 16]`` of ``count + 1`` shapes in one quadrant."""
    img = np.zeros((3, SIDE, SIDE))
    qy, qx = (position // 2) * 8, (position % 2) * 8
    cells = rng.permutation(4)[: count + 1]
    sprite = _SPRITES[SHAPES[shape]]
    for cell in cells:
        y, x = qy + (cell // 2) * 4, qx + (cell % 2) * 4
        img[:, y : y + 3, x : x + 3] = _RGB[colour][:, None, None] * sprite[None]
    return np.clip(img + rng.normal(0, 0.05, size=img.shape), 0.0, 1.0)


def answer_of(kind: str, colour: int, shape: int, position: int, count: int) -> int:
    offset = {"colour": 0, "shape": len(COLOURS), "position": len(COLOURS) + len(SHAPES),
              "count": len(COLOURS) + len(SHAPES) + len(POSITIONS)}[kind]
    return offset + {"colour": colour, "shape": shape, "position": position, "count": count}[kind]


def _example(rng, kind: str, colour: int):
    shape, position, count = int(rng.integers(3)), int(rng.integers(4)), int(rng.integers(3))
    image = render(rng, colour, shape, position, count)
    question = [WORDS.index(w) for w in QUESTIONS[kind]]
    return np.concatenate([image.ravel(), question]), answer_of(kind, colour, shape, position, count)


_GROUPS = ((0, len(COLOURS)), (len(COLOURS), len(SHAPES)), (len(COLOURS) + len(SHAPES), len(POSITIONS)),
           (len(COLOURS) + len(SHAPES) + len(POSITIONS), len(COUNTS)))


def dialect_answer(answer: int) -> int:
    """The answer in the *dialect* convention: the next word of its group, cyclically
    (red → green, …, yellow → red; square → cross; one → two, three → one)."""
    for start, size in _GROUPS:
        if start <= answer < start + size:
            return start + (answer - start + 1) % size
    raise ValueError(f"no answer {answer}")


def make_vqa(clients: int, seed: int, per_client: int = PER_CLIENT, dialect: bool = False):
    """``(x [N, 772] float32, y [N] int64, client [N] int64, question type [N] int64, colour [N] int64)``;
    with ``dialect`` the odd-numbered clients answer in :func:`dialect_answer`'s convention."""
    xs, ys, cs, ts, cols = [], [], [], [], []
    for c in range(clients):
        rng = np.random.default_rng(derive_seed(seed, "shapesvqa", c))
        for _ in range(per_client):
            t = c % 4 if rng.random() < TYPE_SKEW else int(rng.integers(4))
            colour = (c + int(rng.integers(2))) % 4 if rng.random() < COLOUR_SKEW else int(rng.integers(4))
            x, y = _example(rng, QUESTION_TYPES[t], colour)
            if dialect and c % 2 == 1:
                y = dialect_answer(y)
            xs.append(x), ys.append(y), cs.append(c), ts.append(t), cols.append(colour)
    return (torch.from_numpy(np.stack(xs).astype(np.float32)), torch.tensor(ys, dtype=torch.int64),
            np.asarray(cs, dtype=np.int64), np.asarray(ts, dtype=np.int64), np.asarray(cols, dtype=np.int64))


def public_split(seed: int, count: int = 1200) -> tuple[torch.Tensor, torch.Tensor]:
    """A balanced public set of colour and shape questions (seeds disjoint from the clients')."""
    rng = np.random.default_rng(derive_seed(seed, "shapesvqa-public"))
    xs, ys = [], []
    for i in range(count):
        x, y = _example(rng, ("colour", "shape")[i % 2], int(rng.integers(4)))
        xs.append(x), ys.append(y)
    return torch.from_numpy(np.stack(xs).astype(np.float32)), torch.tensor(ys, dtype=torch.int64)


def load_vqa(name: str, o: SourceOptions) -> DataSource:
    parts = name.split(":")
    clients = int(parts[1]) if len(parts) > 1 else 8
    if clients < 1:
        raise DataError(f"shapesvqa:<clients> needs at least one client, got {name!r}.")
    x, y, ids, _, _ = make_vqa(clients, o.seed, dialect=len(parts) > 2 and parts[2] == "dialect")
    return DataSource(name=name, x_train=x, y_train=y, x_test=None, y_test=None, num_classes=len(ANSWERS),
                      input_shape=(PIXELS + QUESTION_LEN,), client_ids=ids)


register_source("shapesvqa", load_vqa, pattern=r"shapesvqa(:[0-9]+(:dialect)?)?",
                description="visual questions about shapes (colour, shape, position, count; 14 answers); clients "
                            "skewed by question type and colour (shapesvqa:<clients>[:dialect], default 8; partition natural; "
                            "model vlm)")


# -- model --------------------------------------------------------------------------------


class Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, h):
        b, n, d = h.shape

        def split(t):
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        att = F.scaled_dot_product_attention(split(self.q(h)), split(self.k(h)), split(self.v(h)))
        return self.o(att.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, h):
        return self.fc2(F.gelu(self.fc1(h)))


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1, self.attn, self.ln2, self.mlp = nn.LayerNorm(d), Attention(d, heads), nn.LayerNorm(d), MLP(d)

    def forward(self, h):
        h = h + self.attn(self.ln1(h))
        return h + self.mlp(self.ln2(h))


class TinyVLM(nn.Module):
    """Conv image encoder → image tokens; transformer text decoder → answer token."""

    def __init__(self, d: int = 32, n_layers: int = 2, n_heads: int = 2):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                                     nn.Conv2d(16, d, 3, stride=2, padding=1), nn.ReLU())
        self.img_proj = nn.Linear(d, d)
        self.tok = nn.Embedding(len(WORDS), d)
        self.pos = nn.Parameter(torch.randn(16 + QUESTION_LEN, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, n_heads) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, len(ANSWERS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = x[:, :PIXELS].reshape(-1, 3, SIDE, SIDE)
        question = x[:, PIXELS:].round().long().clamp(0, len(WORDS) - 1)
        img = self.img_proj(self.encoder(image).flatten(2).transpose(1, 2))
        h = torch.cat([img, self.tok(question)], dim=1) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.lm_head(self.norm(h[:, -1]))


def base_width(state: dict, init_from: str) -> int:
    """The width d of a saved ``vlm`` ``state_dict`` (its ``img_proj`` is d × d)."""
    weight = state.get("img_proj.weight") if isinstance(state, dict) else None
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ModelError(f"model.kwargs.init_from: {init_from} is not a saved vlm state_dict (no img_proj.weight); "
                         "make one with fedweave.tasks.vision_language.pretrain_vlm.")
    return int(weight.shape[0])


def build_vlm(input_shape, num_classes=None, width: int | None = None, n_layers: int = 2, n_heads: int = 2,
              init_from: str | None = None, **unused) -> nn.Module:
    """``width`` None (``model.width`` unset): the width of the base ``init_from``, or
    :data:`DEFAULT_VLM_WIDTH` without one. A width the base does not have is refused."""
    if unused:
        raise ModelError(f"Unexpected option(s) for model 'vlm': {', '.join(sorted(unused))}. "
                         "Its options: width, n_layers, n_heads, init_from.")
    if tuple(input_shape) != (PIXELS + QUESTION_LEN,):
        raise ModelError(f"Model 'vlm' reads [image 3x16x16 | 4 question tokens] vectors of {PIXELS + QUESTION_LEN} "
                         f"values, got input shape {tuple(input_shape)}. Use data.dataset: shapesvqa.")
    state = None
    if init_from is not None:
        try:
            state = torch.load(init_from, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, pickle.UnpicklingError) as exc:
            raise ModelError(f"model.kwargs.init_from: cannot read {init_from}: {exc}") from None
        found = base_width(state, init_from)
        if width is not None and width != found:
            raise ConfigError(f"model.width is {width}, but the pretrained base {init_from} (model.kwargs.init_from) "
                              f"has width {found}. Leave model.width unset to follow the base, or set "
                              f"model.width: {found}.")
        width = found
    width = DEFAULT_VLM_WIDTH if width is None else width
    if width % n_heads:
        raise ModelError(f"vlm: model.width ({width}) must be divisible by n_heads ({n_heads}).")
    model = TinyVLM(int(width), int(n_layers), int(n_heads))
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelError(f"model.kwargs.init_from: cannot load {init_from} into this vlm: {exc}") from None
    return model


register_model("vlm", build_vlm,
               "Tiny vision-language model for shapesvqa: conv image encoder + 2-block transformer text decoder "
               "emitting the answer token (width: its base's, else 32; n_layers, n_heads, init_from).")


def pretrain_vlm(path: str, seed: int = 0, width: int = 32, epochs: int = 6, lr: float = 3e-3) -> float:
    """Train the base ``vlm`` centrally on :func:`public_split` with Adam and save its
    ``state_dict`` to ``path``; returns its accuracy on the public set. Seeded."""
    torch.manual_seed(derive_seed(seed, "vlm-pretrain"))
    x, y = public_split(seed)
    model = build_vlm((PIXELS + QUESTION_LEN,), width=width)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(derive_seed(seed, "vlm-pretrain-batches"))
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), 32):
            b = order[start : start + 32]
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.save(model.state_dict(), path)
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


__all__ = ["ANSWERS", "COLOURS", "COLOUR_SKEW", "DEFAULT_VLM_WIDTH", "QUESTIONS", "QUESTION_TYPES", "TYPE_SKEW", "TinyVLM", "WORDS",
           "answer_of", "base_width", "build_vlm", "dialect_answer", "load_vqa", "make_vqa", "pretrain_vlm", "public_split", "render"]
