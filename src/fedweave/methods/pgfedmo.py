"""PGFedMo — Luo & Wu, "PGFed: Personalize Each Client's Global Objective for Federated
Learning", ICCV 2023 (the momentum variant; official code: github.com/ljaiverson/pgfed).

PGFed (:mod:`fedweave.methods.pgfed`, where the equations and the official code's
conventions are) with momentum on each client's correction term: at the start of its
round, client i mixes the correction it receives with the last one it used,

    c_i ← (1 − β) c_i + β c_i^old,

and trains with ∇f_i(θ) + c_i as in PGFed. β = ``method.beta``, default 0.5; μ and λ as in
PGFed (0.1, 0.01, the README's CIFAR-10 command).
"""

from pydantic import Field

from .pgfed import PGFED_UPLOADS, PGFedParams, build_pgfed
from .registry import MethodInfo, register


class PGFedMoParams(PGFedParams):
    beta: float = Field(0.5, ge=0, lt=1, description="momentum on the correction c_i (PGFedMo: 0.5)")


METHOD = register(
    MethodInfo(
        name="pgfedmo",
        summary="PGFed with momentum β on the correction term (method.beta, default 0.5)",
        citation="Luo & Wu, ICCV 2023",
        build=build_pgfed,
        params=PGFedMoParams,
        payload_schema=PGFED_UPLOADS,  # the same uploads as PGFed
    )
)
