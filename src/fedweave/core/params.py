"""Flat parameter vectors: :class:`ParamSpec` and :class:`FlatModel`.

A model's state is described by a :class:`ParamSpec`: every tensor as a named segment
with a shape, a dtype, an offset and a *role*:

``trainable``
    trained on the client and sent to the server (the default for parameters);
``personal``
    trained on the client but kept there (FedPer heads, FedBN normalisation layers);
``buffer``
    a float buffer such as BatchNorm running statistics: not trained, sent, and
    aggregated by a plain weighted mean;
``frozen``
    neither trained nor sent (a pretrained backbone); not counted in bytes.

Integer buffers (``num_batches_tracked``) never enter a float vector: they stay in the
module and are not communicated.

:class:`FlatModel` lays every float tensor of a module out in one contiguous buffer::

    [ trainable params | personal params | shared buffers | personal buffers | frozen ]

and rebinds the module's parameters and buffers as *views* into it, so loading a
global model is one ``copy_`` and reading an update is one ``clone``. Gradients of the
trained parameters are views into one flat gradient vector, so local optimizers and
gradient hooks (FedProx, SCAFFOLD, PGFed) are single vector operations.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

from .device import module_device
from .errors import ConfigError, ModelError

ROLES = ("trainable", "personal", "buffer", "frozen")
# Order of the groups inside the flat buffer; trainable and personal parameters are
# adjacent so that everything trained is one contiguous slice.
_GROUPS = ("trainable", "personal", "buffer", "personal_buffer", "frozen")


@dataclass(frozen=True)
class Segment:
    """One tensor of the model's state."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    role: str  # one of ROLES, or "int_buffer"
    is_buffer: bool
    offset: int  # offset inside its group's vector (-1 for integer buffers)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def group(self) -> str:
        if self.role == "personal" and self.is_buffer:
            return "personal_buffer"
        return self.role

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + self.numel)


class ParamSpec:
    """The layout of a model's state: named segments grouped by role."""

    def __init__(self, segments: list[Segment], dtype: torch.dtype):
        self.segments = tuple(segments)
        self.dtype = dtype
        self.sizes = {g: 0 for g in _GROUPS}
        for seg in segments:
            if seg.role != "int_buffer":
                self.sizes[seg.group] += seg.numel

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_module(cls, module: nn.Module, roles: dict[str, str] | None = None) -> "ParamSpec":
        """Describe ``module``; ``roles`` maps name patterns (fnmatch) to roles.

        The first matching pattern wins. Parameters default to ``trainable`` (``frozen``
        when ``requires_grad`` is False), float buffers to ``buffer``.
        """
        roles = dict(roles or {})
        for pattern, role in roles.items():
            if role not in ROLES:
                raise ConfigError(f"Unknown role {role!r} for {pattern!r}. Allowed: {', '.join(ROLES)}.")
        float_dtypes = set()
        entries = []
        for name, p in module.named_parameters():
            role = _match_role(name, roles) or ("trainable" if p.requires_grad else "frozen")
            if role == "buffer":
                raise ConfigError(f"Parameter {name!r} cannot have role 'buffer' (only buffers can).")
            entries.append((name, p, role, False))
            float_dtypes.add(p.dtype)
        for name, b in module.named_buffers():
            if not b.is_floating_point():
                entries.append((name, b, "int_buffer", True))
                continue
            role = _match_role(name, roles) or "buffer"
            if role == "trainable":
                raise ConfigError(f"Buffer {name!r} cannot be trainable; use 'buffer', 'personal' or 'frozen'.")
            entries.append((name, b, role, True))
            float_dtypes.add(b.dtype)
        if len(float_dtypes) > 1:
            raise ModelError(
                f"All floating-point parameters and buffers must share one dtype; found {sorted(map(str, float_dtypes))}."
            )
        dtype = float_dtypes.pop() if float_dtypes else torch.float32
        offsets = {g: 0 for g in _GROUPS}
        segments = []
        # Lay out group by group, keeping module order inside each group.
        for group in _GROUPS:
            for name, t, role, is_buffer in entries:
                seg = Segment(name, tuple(t.shape), t.dtype, role, is_buffer, -1)
                if role == "int_buffer" or seg.group != group:
                    continue
                segments.append(Segment(name, tuple(t.shape), t.dtype, role, is_buffer, offsets[group]))
                offsets[group] += t.numel()
        segments += [Segment(n, tuple(t.shape), t.dtype, r, b, -1) for n, t, r, b in entries if r == "int_buffer"]
        return cls(segments, dtype)

    # -- queries ------------------------------------------------------------------
    @property
    def num_params(self) -> int:
        """Length of the shared trainable vector (what server maths works on)."""
        return self.sizes["trainable"]

    @property
    def num_personal(self) -> int:
        return self.sizes["personal"]

    @property
    def num_buffers(self) -> int:
        """Length of the shared float-buffer vector."""
        return self.sizes["buffer"]

    @property
    def num_personal_buffers(self) -> int:
        return self.sizes["personal_buffer"]

    def group(self, group: str) -> list[Segment]:
        return [s for s in self.segments if s.role != "int_buffer" and s.group == group]

    def layers(self) -> list[tuple[str, slice]]:
        """Slices of the trainable vector grouped by owning module (``fc1.weight`` and
        ``fc1.bias`` form layer ``fc1``), for layer-wise methods."""
        out: list[tuple[str, slice]] = []
        for seg in self.group("trainable"):
            layer = seg.name.rsplit(".", 1)[0] if "." in seg.name else seg.name
            if out and out[-1][0] == layer and out[-1][1].stop == seg.offset:
                out[-1] = (layer, slice(out[-1][1].start, seg.offset + seg.numel))
            else:
                out.append((layer, seg.slice))
        return out

    def bytes_of(self, group: str) -> int:
        return self.sizes[group] * torch.empty((), dtype=self.dtype).element_size()

    def __repr__(self) -> str:
        return f"ParamSpec({', '.join(f'{g}={n}' for g, n in self.sizes.items() if n)}, dtype={self.dtype})"


def check_role_patterns(module: nn.Module, patterns, what: str = "model.roles") -> None:
    """Refuse a role pattern that matches no parameter or buffer name of ``module``: a
    typo there would silently leave the part it meant trainable, shared or sent."""
    names = [n for n, _ in module.named_parameters()] + [n for n, _ in module.named_buffers()]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
        raise ConfigError(f"{what} pattern(s) {', '.join(map(repr, unmatched))} match no parameter or buffer of the "
                          f"model. Patterns are fnmatch patterns over these names: {shown} (e.g. 'fc3.*').")


def _match_role(name: str, roles: dict[str, str]) -> str | None:
    for pattern, role in roles.items():
        if fnmatch.fnmatchcase(name, pattern):
            return role
    return None


class FlatModel:
    """A module whose float state lives in one flat buffer, with flat gradients.

    Attributes are views into the buffer: ``params`` (shared trainable), ``personal``
    (personal parameters), ``trained`` (both, contiguous), ``buffers`` (shared float
    buffers), ``personal_buffers`` and ``frozen``; ``grad`` is the gradient of
    ``trained``.
    """

    def __init__(self, module: nn.Module, roles: dict[str, str] | None = None):
        self.module = module
        self.spec = ParamSpec.from_module(module, roles)
        sizes = self.spec.sizes
        self._starts = {}
        start = 0
        for g in _GROUPS:
            self._starts[g] = start
            start += sizes[g]
        # the flat storage lives where the module does: a module moved to CUDA before it is
        # wrapped stays there (parameters are rebound to views of this buffer below)
        device = module_device(module)
        self.flat = torch.zeros(start, dtype=self.spec.dtype, device=device)
        n_trained = sizes["trainable"] + sizes["personal"]
        self.grad = torch.zeros(n_trained, dtype=self.spec.dtype, device=device)
        self.params = self._view("trainable")
        self.personal = self._view("personal")
        self.trained = self.flat[:n_trained]
        self.buffers = self._view("buffer")
        self.personal_buffers = self._view("personal_buffer")
        self.frozen = self._view("frozen")
        self.rebind(copy_values=True)

    def _view(self, group: str) -> torch.Tensor:
        s = self._starts[group]
        return self.flat[s : s + self.spec.sizes[group]]

    def _segment_view(self, seg: Segment) -> torch.Tensor:
        s = self._starts[seg.group] + seg.offset
        return self.flat[s : s + seg.numel].view(seg.shape)

    def _grad_view(self, seg: Segment) -> torch.Tensor:
        s = (0 if seg.group == "trainable" else self._starts["personal"]) + seg.offset
        return self.grad[s : s + seg.numel].view(seg.shape)

    def rebind(self, copy_values: bool = False) -> None:
        """Point every parameter, buffer and gradient of the module into the flat
        storage (again). Call after a method wraps or swaps modules."""
        params = dict(self.module.named_parameters())
        owners = dict(self.module.named_modules())
        for seg in self.spec.segments:
            if seg.role == "int_buffer":
                continue
            view = self._segment_view(seg)
            if seg.is_buffer:
                owner_name, _, attr = seg.name.rpartition(".")
                owner = owners[owner_name]
                if copy_values:
                    view.copy_(owner._buffers[attr])
                owner._buffers[attr] = view
            else:
                p = params[seg.name]
                if copy_values:
                    view.copy_(p.detach())
                p.data = view
                p.requires_grad_(seg.role in ("trainable", "personal"))
                if seg.role in ("trainable", "personal"):
                    p.grad = self._grad_view(seg)

    def check_aliasing(self) -> None:
        """Raise :class:`ModelError` if any tensor no longer lives in the flat buffer."""
        params = dict(self.module.named_parameters())
        buffers = dict(self.module.named_buffers())
        for seg in self.spec.segments:
            if seg.role == "int_buffer":
                continue
            t = buffers.get(seg.name) if seg.is_buffer else params.get(seg.name)
            if t is None or t.data_ptr() != self._segment_view(seg).data_ptr():
                raise ModelError(f"{seg.name!r} is no longer a view into the flat parameter buffer; call rebind().")
            if not seg.is_buffer and seg.role in ("trainable", "personal"):
                g = params[seg.name].grad
                if g is None or g.data_ptr() != self._grad_view(seg).data_ptr():
                    raise ModelError(f"The gradient of {seg.name!r} is no longer a view into the flat gradient.")

    def zero_grad(self) -> None:
        self.grad.zero_()

    def int_buffers(self) -> dict[str, torch.Tensor]:
        return {n: b for n, b in self.module.named_buffers() if not b.is_floating_point()}
