"""Per-call kernel planning: the op's ``plan`` argument as a request, resolved for the concrete shape.

A compiled graph may serve layers of many shapes (a forward shared by every layer, symbolic K and N)
and every M, so the plan cannot be fixed at compile time.  The pass puts a :class:`PlanRequest` in the
op's ``plan`` argument (the target and the user's ``kernel`` / ``disabled_kernels`` choices, as text);
the op asks :func:`resolve` for the plan of the call's actual problem, which
:func:`awq_compile.kernels.registry.select` computes once per (request, problem) and caches.

A plain encoded :class:`~awq_compile.kernels.registry.Plan` is still accepted (tests and tools that
call the op directly with a fixed plan).
"""

from __future__ import annotations

import dataclasses
import functools

from ..kernels.problem import Problem
from ..kernels.registry import NoKernelError, Plan, select
from ..target import Target

__all__ = ["PlanRequest", "plan_for", "resolve"]

_PREFIX = "request:"


@dataclasses.dataclass(frozen=True)
class PlanRequest:
    target: Target
    force: str | None = None
    disabled: tuple[str, ...] = ()

    def encode(self) -> str:
        """``request:target=hip:gfx942;force=;disabled=triton_gemv`` (readable in graph dumps)."""
        return (f"{_PREFIX}target={self.target};force={self.force or ''};"
                f"disabled={','.join(self.disabled)}")

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def decode(text: str) -> "PlanRequest":
        if not text.startswith(_PREFIX):
            raise ValueError(f"not a plan request: {text!r}")
        fields = dict(part.split("=", 1) for part in text[len(_PREFIX):].split(";"))
        if set(fields) != {"target", "force", "disabled"}:
            raise ValueError(f"plan request {text!r}: expected the fields target, force, disabled")
        return PlanRequest(Target.parse(fields["target"]), fields["force"] or None,
                           tuple(d for d in fields["disabled"].split(",") if d))


@functools.lru_cache(maxsize=4096)
def plan_for(request: PlanRequest, problem: Problem) -> Plan:
    """The plan for one concrete problem (M-bucketed: one plan serves every M), cached."""
    return select(problem, request.target, force=request.force, disabled=request.disabled)


def resolve(plan: str, problem: Problem, layer: str = "") -> Plan:
    """The op's ``plan`` argument -> the Plan for this call's problem."""
    if not plan.startswith(_PREFIX):
        return Plan.decode(plan)
    try:
        return plan_for(PlanRequest.decode(plan), problem)
    except NoKernelError as e:
        raise ValueError(f"awq_compile: layer '{layer or '?'}': no kernel can run K={problem.K}, N={problem.N}, "
                         f"group size {problem.group_size} for this call: {e}") from e
