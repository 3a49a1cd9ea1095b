"""Robustness figures added to the evaluation records and the summary.

* ``attack_success_rate`` — backdoor: the share of test inputs whose label is not the
  target that, with the whole trigger stamped, are classified as the target; targeted
  label flip (``attack.source``): the share of the source class classified as the target.
  Under a rejection rule (FLIP's confidence threshold ``method.threshold``, or
  ``eval.reject_threshold`` with any method), a rejected prediction counts as a failed
  attack (``attack_success_rate_no_rejection`` is the same figure without the rule).
* ``accuracy_with_rejection`` / ``rejection_rate`` (``eval.reject_threshold``, any method)
  — clean test accuracy counting rejected predictions as wrong, and the share rejected:
  the rejection rule on its own, e.g. FedAvg + τ as the control for FLIP.
* ``robust_accuracy`` (``eval.robust_accuracy``) — accuracy under L∞ PGD-k on the first
  ``eval.robust_max_examples`` test examples (:mod:`fedweave.models.adversarial`).

The summary gets the last value of each as ``final_attack_success_rate`` /
``final_robust_accuracy``.
"""

from __future__ import annotations

import torch

from ..core.device import module_device
from ..core.errors import ConfigError
from ..core.observer import Observer
from ..methods import get_method
from ..methods.rejection import RejectionObserver, reject
from ..models.adversarial import robust_accuracy


def rejection_threshold(config) -> float | None:
    """The confidence threshold below which predictions are rejected, or None: the method's
    own rejection rule (FLIP's ``method.threshold``, from its threat adapter), else
    ``eval.reject_threshold`` for any other method."""
    own = get_method(config.method.name).threats.rejection_threshold(config)
    return own if own is not None else config.eval.reject_threshold


@torch.no_grad()
def success_rate(module, x: torch.Tensor, target: int, threshold: float | None = None, batch_size: int = 2048) -> float:
    """Share of ``x`` classified as ``target`` (with confidence ≥ threshold, if given)."""
    if len(x) == 0:
        return float("nan")
    was_training = module.training
    module.eval()
    hits = 0
    dev = module_device(module)  # the ledger hands observers its evaluation model on executor.device
    for start in range(0, len(x), batch_size):
        logits = module(x[start : start + batch_size].to(dev))
        ok = logits.argmax(dim=1) == target
        if threshold is not None:
            ok &= ~reject(logits, threshold)
        hits += int(ok.sum())
    module.train(was_training)
    return hits / len(x)


class AttackObserver(Observer):
    def __init__(self, plan, exp):
        self.plan = plan
        self.threshold = rejection_threshold(exp.config)
        self.batch_size = exp.config.eval.batch_size
        self.last: float | None = None
        data = exp.data
        self.x_asr = None
        if plan.kind == "backdoor":
            keep = data.y_test != plan.target
            self.x_asr = plan.trigger.stamp(data.x_test[keep])
        elif plan.kind == "label_flip" and plan.source is not None:
            self.x_asr = data.x_test[data.y_test == plan.source]

    def evaluate(self, module, state) -> dict:
        if self.x_asr is None:
            return {}
        self.last = success_rate(module, self.x_asr, self.plan.target, self.threshold, self.batch_size)
        out = {"attack_success_rate": self.last}
        if self.threshold is not None:  # the same without the rejection rule, for comparison
            out["attack_success_rate_no_rejection"] = success_rate(module, self.x_asr, self.plan.target, None, self.batch_size)
        return out

    def summary(self) -> dict:
        out = {"attack": self.plan.kind, "malicious_clients": list(self.plan.malicious)}
        if self.x_asr is not None:
            out["final_attack_success_rate"] = self.last
        return out

    def state_dict(self) -> dict:
        return {"last": self.last}

    def load_state_dict(self, state: dict) -> None:
        self.last = state.get("last")


class RobustAccuracyObserver(Observer):
    def __init__(self, exp):
        e = exp.config.eval
        data = exp.data
        n = len(data.y_test) if e.robust_max_examples is None else min(e.robust_max_examples, len(data.y_test))
        self.x, self.y = data.x_test[:n], data.y_test[:n]
        self.lo, self.hi = float(data.x.min()), float(data.x.max())
        self.eps, self.steps, self.step_size = e.robust_eps, e.robust_steps, e.robust_step_size
        self.seed = exp.config.seed
        self.last: float | None = None

    def evaluate(self, module, state) -> dict:
        self.last = robust_accuracy(module, self.x, self.y, self.eps, self.steps, self.step_size, self.lo, self.hi, seed=self.seed)
        return {"robust_accuracy": self.last}

    def summary(self) -> dict:
        return {"final_robust_accuracy": self.last, "robust_eps": self.eps, "robust_steps": self.steps}

    def state_dict(self) -> dict:
        return {"last": self.last}

    def load_state_dict(self, state: dict) -> None:
        self.last = state.get("last")


def configure_robust_accuracy(exp) -> None:
    """Extension: ``eval.robust_accuracy`` adds PGD robust accuracy to the records."""
    if exp.config.eval.robust_accuracy:
        if exp.task.name != "classification":
            raise ConfigError("eval.robust_accuracy needs a classification task.")
        exp.observers.append(RobustAccuracyObserver(exp))


def configure_rejection(exp) -> None:
    """Extension: ``eval.reject_threshold`` applies FLIP's rejection rule to any method's
    evaluation (FLIP itself reports it through ``method.threshold``)."""
    tau = exp.config.eval.reject_threshold
    if tau is None:
        return
    if get_method(exp.config.method.name).threats.rejection_threshold(exp.config) is not None:
        raise ConfigError(f"Method {exp.config.method.name!r} applies its own rejection threshold "
                          "(method.threshold); remove eval.reject_threshold (it applies the same rule to other "
                          "methods, e.g. FedAvg + τ as FLIP's control).")
    if exp.task.name != "classification":
        raise ConfigError("eval.reject_threshold needs a classification task (it thresholds the softmax confidence).")
    exp.observers.append(RejectionObserver(exp.data.x_test, exp.data.y_test, tau, exp.config.eval.batch_size))
