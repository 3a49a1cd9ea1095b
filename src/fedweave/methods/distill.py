"""Local training with feature distillation from a frozen teacher, for FSAR's general form
(``fsar``); its graph form (``fsar_gcn``) takes its teacher copy from :func:`teacher_model`
too. Not a method: no registration.

The teacher is a second copy of the model on the worker's device (built once per worker).
Each local step runs the student, captures the outputs of the named modules of both
models with forward hooks, and adds ``term(student_features, teacher_features)`` to the
task loss; the teacher's forward runs under ``no_grad`` (stop-gradient).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from ..core.client import ClientAlgorithm, JobResult
from ..core.params import FlatModel

#: (student features, teacher features) -> the distillation term added to the loss
DistillTerm = Callable[[list[torch.Tensor], list[torch.Tensor]], torch.Tensor]


def teacher_model(worker, key: str) -> FlatModel:
    """The worker's teacher copy of its model (built once, on the worker's device)."""
    teacher = getattr(worker, key, None)
    if teacher is None:
        with torch.device("cpu"):  # built on the host like the worker's own model, then moved
            module = worker.setup.model_factory()
        teacher = FlatModel(module.to(worker.model.flat.device), worker.setup.roles)
        setattr(worker, key, teacher)
    return teacher


def train_distilling(algorithm: ClientAlgorithm, job, worker, generator: torch.Generator, teacher: FlatModel,
                     names: Sequence[str], term: Optional[DistillTerm]) -> JobResult:
    """``local_train`` with ``task loss + term(features)`` (``term`` None: the task loss alone)."""
    from ..train import local_train

    model = worker.model
    s_mod, t_mod = dict(model.module.named_modules()), dict(teacher.module.named_modules())
    feats: dict[tuple[str, str], torch.Tensor] = {}

    def capture(side: str, name: str):
        def hook(mod, inp, out):
            feats[(side, name)] = out

        return hook

    handles = [s_mod[n].register_forward_hook(capture("s", n)) for n in names]
    handles += [t_mod[n].register_forward_hook(capture("t", n)) for n in names]
    task = worker.task
    teacher.module.train()

    def loss_fn(module, xb, yb):
        feats.clear()
        loss = task.loss(module(xb), yb)
        if term is None:
            return loss
        with torch.no_grad():
            teacher.module(xb)
        return loss + term([feats[("s", n)] for n in names], [feats[("t", n)] for n in names])

    idx = worker.data.client_train[job.client_id]
    try:
        result = local_train(model, task, worker.data.x, worker.data.y, idx, job.settings, generator,
                             algorithm.grad_hooks(job, worker), loss_fn)
    finally:
        for h in handles:
            h.remove()
        feats.clear()
    update = algorithm.build_update(job, worker, result.steps, {"loss": result.mean_loss})
    return JobResult(update, None, result.examples_processed)
