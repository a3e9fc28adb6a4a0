"""Kernel registry and selection: a pure function of (problem, target).

Each :class:`KernelSpec` answers ``can_implement(problem, target)`` with a config it would run, or the
reason it cannot.  Kernels are listed per target family in priority order; :func:`select` walks the M
buckets, takes for each the first kernel that can, and returns a :class:`Plan` -- the M -> (kernel,
config) table the custom op consults at run time.  Nothing here looks at the host: asking about
``hip:gfx942`` on a CPU-only machine gives the answer an MI300 would get.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

from ..target import Target
from . import configs as _configs
from .problem import Problem

__all__ = ["KernelSpec", "KERNELS", "PRIORITY", "Plan", "PlanEntry", "NoKernelError", "select",
           "kernels_for", "M_BUCKETS"]

# Upper ends of the M buckets a plan distinguishes (None: everything larger).
M_BUCKETS: tuple[int | None, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, None)


@dataclasses.dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""
    config: tuple = ()  # sorted (key, value) pairs


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    id: str
    description: str
    families: tuple[str, ...]                 # target families it runs on
    uses_triton: bool
    act_dtypes: tuple[str, ...]
    m_max: int | None = None                  # largest M this kernel is meant for
    m_min: int | None = None                  # smallest M bucket (upper end) this kernel is meant for
    extra_check: Callable[[Problem, Target], str | None] | None = None

    def can_implement(self, problem: Problem, target: Target, *, triton_version: str | None = None) -> Verdict:
        reason = problem.basic_reason()
        if reason:
            return Verdict(False, reason)
        if target.family not in self.families:
            return Verdict(False, f"runs on {'/'.join(self.families)} targets, not {target} ({target.family})")
        if self.uses_triton:
            reason = target.triton_support()
            if reason:
                return Verdict(False, reason)
        if problem.act_dtype not in self.act_dtypes:
            return Verdict(False, f"takes {'/'.join(self.act_dtypes)} activations, not {problem.act_dtype}")
        if self.m_max is not None and (problem.m is None or problem.m > self.m_max):
            return Verdict(False, f"serves M <= {self.m_max} only")
        if self.m_min is not None and problem.m is not None and problem.m < self.m_min:
            return Verdict(False, f"serves M buckets from {self.m_min} up only (the fused kernels win below)")
        if self.extra_check is not None:
            reason = self.extra_check(problem, target)
            if reason:
                return Verdict(False, reason)
        if not self.uses_triton:
            return Verdict(True)
        return _pick_config(self.id, problem, target, triton_version)


def _pick_config(kernel_id, problem, target, triton_version) -> Verdict:
    from .triton_w4a16 import prune  # triton import deferred to the first Triton question

    source, cands = _configs.candidates(target.arch, target.family, kernel_id, problem.m, triton_version)
    if not cands:
        return Verdict(False, f"no tuned config for M bucket {problem.m} in {source}")
    act_bytes = 4 if problem.act_dtype == "float32" else 2
    drops = []
    for cfg in cands:
        why = prune(kernel_id, cfg, K=problem.K, N=problem.N, group_size=problem.group_size,
                    shared_limit=target.shared_memory, act_bytes=act_bytes)
        if why is None:
            return Verdict(True, config=tuple(sorted(cfg.items())))
        drops.append(why)
    return Verdict(False, f"every config in {source} was pruned: {drops[0]}")


def _cpu_int4pack_check(problem: Problem, target: Target) -> str | None:
    if problem.group_size not in (32, 64, 128, 256):
        return f"torch's CPU int4 kernel takes group sizes 32/64/128/256, not {problem.group_size}"
    if problem.N % 16:
        return f"torch's CPU int4 kernel needs N divisible by 16, N={problem.N}"
    return None


KERNELS: dict[str, KernelSpec] = {k.id: k for k in (
    KernelSpec("triton_gemv", "Triton split-K GEMV (fp32 FMA, no matrix units) for decode-sized M",
               ("cuda", "cdna", "rdna"), True, ("float16", "bfloat16"), m_max=4),
    KernelSpec("triton_gemm", "Triton tiled fused W4A16 GEMM on the matrix units, optional split-K",
               ("cuda", "cdna", "rdna"), True, ("float16", "bfloat16")),
    # bf16 only: on CPUs without native fp16 math torch's int4 kernel ran fp16 ~35x slower than bf16
    # (measured on the 2-core CI machine, 2026-11-24); fp16/fp32 take the dequant + fp32 matmul path.
    KernelSpec("triton_dequant_mm", "large M: Triton dequantises the weight to the activation dtype, then "
               "torch.matmul (cuBLAS / hipBLASLt) multiplies; for M buckets from 256 up where a table lists it",
               ("cuda", "cdna", "rdna"), True, ("float16", "bfloat16"), m_min=256),
    KernelSpec("cpu_int4pack", "torch._weight_int4pack_mm_for_cpu on weights repacked for it (bf16)",
               ("cpu",), False, ("bfloat16",), extra_check=_cpu_int4pack_check),
    KernelSpec("torch_dequant", "dequantise the standard layout per call, then matmul (fp32 on CPU); "
               "weights stay 4-bit in memory, at the cost of one dequantisation per call",
               ("cpu", "cuda", "cdna", "rdna"), False, ("float16", "bfloat16", "float32")),
)}

PRIORITY: dict[str, tuple[str, ...]] = {
    "cuda": ("triton_gemv", "triton_dequant_mm", "triton_gemm", "torch_dequant"),
    "cdna": ("triton_gemv", "triton_gemm", "torch_dequant"),
    "rdna": ("triton_gemv", "triton_gemm", "torch_dequant"),
    "cpu": ("cpu_int4pack", "torch_dequant"),
}


def kernels_for(target: Target) -> tuple[str, ...]:
    return PRIORITY.get(target.family, ("torch_dequant",))


@dataclasses.dataclass(frozen=True)
class PlanEntry:
    m_max: int | None
    kernel: str
    config: tuple = ()

    @property
    def config_dict(self) -> dict:
        return dict(self.config)


@dataclasses.dataclass(frozen=True)
class Plan:
    """M-bucketed kernel choices; ``rejected`` maps every listed kernel that is not used to why."""

    entries: tuple[PlanEntry, ...]
    rejected: tuple[tuple[str, str], ...] = ()

    def entry_for(self, m: int) -> PlanEntry:
        for e in self.entries:
            if e.m_max is None or m <= e.m_max:
                return e
        return self.entries[-1]

    @property
    def kernels(self) -> tuple[str, ...]:
        seen = []
        for e in self.entries:
            if e.kernel not in seen:
                seen.append(e.kernel)
        return tuple(seen)

    def encode(self) -> str:
        """Compact text carried by the custom op's ``plan`` argument (readable in graph dumps)."""
        parts = []
        for e in self.entries:
            cfg = ",".join(f"{k}={v}" for k, v in e.config)
            parts.append(f"{'*' if e.m_max is None else e.m_max}:{e.kernel}" + (f":{cfg}" if cfg else ""))
        return ";".join(parts)

    @staticmethod
    @functools.lru_cache(maxsize=1024)
    def decode(text: str) -> "Plan":
        entries = []
        for part in text.split(";"):
            bits = part.split(":", 2)
            m_max = None if bits[0] == "*" else int(bits[0])
            cfg = ()
            if len(bits) == 3 and bits[2]:
                cfg = tuple((k, int(v)) for k, v in (kv.split("=") for kv in bits[2].split(",")))
            entries.append(PlanEntry(m_max, bits[1], cfg))
        if not entries or entries[-1].m_max is not None:
            raise ValueError(f"plan {text!r} must end with an open bucket '*:'")
        return Plan(tuple(entries))

    def describe(self) -> str:
        out, lo = [], 1
        for e in self.entries:
            hi = "" if e.m_max is None else str(e.m_max)
            out.append(f"M {lo}..{hi or 'inf'}: {e.kernel}")
            lo = (e.m_max or 0) + 1
        return "; ".join(out)


class NoKernelError(RuntimeError):
    def __init__(self, problem: Problem, target: Target, reasons: dict[str, str]):
        self.reasons = reasons
        lines = "\n".join(f"  {k}: {r}" for k, r in reasons.items())
        super().__init__(f"no kernel can implement {problem} on {target}:\n{lines}")


def select(problem: Problem, target: Target, *, force: str | None = None, disabled: tuple[str, ...] = (),
           triton_version: str | None = None) -> Plan:
    """The plan for ``problem`` on ``target``; raises :class:`NoKernelError` listing every refusal."""
    order = kernels_for(target)
    if force:
        if force not in KERNELS:
            raise ValueError(f"unknown kernel {force!r}; known: {sorted(KERNELS)}")
        order = (force,)
    entries: list[PlanEntry] = []
    first_refusal: dict[str, str] = {}
    for m in M_BUCKETS:
        p = problem.with_m(m)
        chosen = None
        for kid in order:
            if kid in disabled:
                first_refusal.setdefault(kid, "disabled by option (disabled_kernels / AWQ_COMPILE_DISABLED_KERNELS)")
                continue
            v = KERNELS[kid].can_implement(p, target, triton_version=triton_version)
            if v.ok:
                chosen = PlanEntry(m, kid, v.config)
                break
            first_refusal.setdefault(kid, v.reason)
        if chosen is None:
            reasons = {k: first_refusal.get(k, "not tried") for k in order}
            raise NoKernelError(p, target, reasons)
        if entries and entries[-1].kernel == chosen.kernel and entries[-1].config == chosen.config:
            entries[-1] = PlanEntry(m, chosen.kernel, chosen.config)
        else:
            entries.append(chosen)
    used = {e.kernel for e in entries}
    rejected = []
    for kid in kernels_for(target) if not force else order:
        if kid in used:
            continue
        rejected.append((kid, first_refusal.get(kid, "lower priority: the kernels above cover every M")))
    return Plan(tuple(entries), tuple(rejected))
