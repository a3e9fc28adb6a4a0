"""Run a :class:`~awq_compile.kernels.spec.LaunchPlan` on tensors; the workspaces.

Two kinds of fp32 workspace (each with its own int32 tile tickets, kept zeroed by the kernels), per
device: ``atomic`` -- the split-K partial sums, fp32 atomics into memory the kernels leave zeroed -- and
``slots`` -- the stripe kernel's per-contributor partial tiles, plain stores that are always written
before they are read, so they hold garbage between calls and must never be handed to an atomic kernel.
Both must exist before CUDA-graph capture: :func:`reserve_workspace` (split-K, sized by rows x N) and
:func:`reserve_for_plan` (whatever a plan's entries need, slots included) allocate them up front.

:func:`run` is the one entry point: (kernel id, config, launch options, tensors, target, interpret) ->
the plan of :func:`~awq_compile.kernels.spec.plan_launch` (cached per problem) -> :func:`launch`.
"""

from __future__ import annotations

import functools

import torch

from ..problem import Problem
from ..spec import LaunchOptions, LaunchPlan, Operands, plan_launch
from ..specs import get_spec
from .compiled import KernelLauncher

__all__ = ["run", "launch", "planned", "kplanes_regroup", "reserve_workspace", "reserve_for_plan", "workspace", "RESERVE_ROWS",
           "WORKSPACE_KINDS"]

WORKSPACE_KINDS = ("atomic", "slots")


class _Workspace:
    """Per-device, per-kind fp32 workspace and tile tickets (tickets always kept zeroed by the kernels;
    the ``atomic`` workspace too, the ``slots`` one never read before it is written)."""

    def __init__(self):
        self._bufs: dict = {}

    def get(self, device, numel: int, tiles: int, kind: str = "atomic"):
        if kind not in WORKSPACE_KINDS:
            raise ValueError(f"unknown workspace kind {kind!r}; kinds: {WORKSPACE_KINDS}")
        key = (device.type, device.index, kind)
        ws, lock = self._bufs.get(key, (None, None))
        if ws is None or ws.numel() < numel or lock.numel() < tiles:
            if torch.cuda.is_available() and device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise RuntimeError(f"awq_compile: the {kind} workspace (split-K / stripe partial sums) must grow "
                                   "during CUDA-graph capture; run the largest batch once eagerly before capturing")
            n = max(numel, 0 if ws is None else ws.numel())
            t = max(tiles, 0 if lock is None else lock.numel())
            ws = torch.zeros(max(n, 1), dtype=torch.float32, device=device)
            lock = torch.zeros(max(t, 1), dtype=torch.int32, device=device)
            self._bufs[key] = (ws, lock)
        return ws, lock


@functools.lru_cache(maxsize=None)
def _workspace() -> _Workspace:
    return _Workspace()


def workspace(device, numel: int, tiles: int, kind: str = "atomic"):
    """The device's (fp32 workspace, int32 tickets) of ``kind``, grown to at least ``numel`` / ``tiles``."""
    return _workspace().get(torch.device(device), numel, tiles, kind)


# Split-K is only planned for small M; reserving for this many rows up front keeps the workspace from being
# (re)allocated inside a CUDA-graph pool (cudagraph trees refuse allocations that outlive a graph).
RESERVE_ROWS = 256


def reserve_workspace(device, N: int, rows: int = RESERVE_ROWS) -> None:
    """Allocate the split-K workspace for ``rows`` x ``N`` now (call outside graph capture/warm-up)."""
    _workspace().get(torch.device(device), rows * N, -(-rows // 16) * -(-N // 16))


# element types as wide as a run of x the kplanes regroup moves as one piece (bytes -> dtype)
_RUN_DTYPES = {16: torch.complex128, 8: torch.int64, 4: torch.int32}


def kplanes_regroup(x2d, bk: int):
    """x [M, K] with the columns of each K tile of ``bk`` (< 128) rows put in the tile's plane-major decode
    order (a copy).  kplanes: row 128 t + 16 i + bk/8 h + r of block t is nibble i of word row r of K tile h;
    the kernels decode a tile plane-major (row i bk/8 + r), after which every K tile of x is one contiguous
    (asynchronously copied) load.  The copy moves runs of bk/8 elements, each run as one element of a dtype
    that wide (16 bytes for bk 64 at fp16) -- torch's copy of 2-byte elements ran at 8% of the H200's DRAM
    bandwidth -- and falls back to element-wise when x's storage is not aligned for that view."""
    M, K = x2d.shape
    run = bk // 8
    wide = _RUN_DTYPES.get(run * x2d.element_size())
    if wide is not None and x2d.is_contiguous() and x2d.storage_offset() % run == 0:
        try:
            xw = x2d.view(wide)
        except RuntimeError:
            xw = None
        if xw is not None:
            return xw.reshape(M, K // 128, 8, 128 // bk).transpose(2, 3).contiguous().view(x2d.dtype).reshape(M, K)
    return x2d.reshape(M, K // 128, 8, 128 // bk, run).transpose(2, 3).reshape(M, K)


def launch(plan: LaunchPlan, x2d, qweight, qzeros, scales, bias, out, *, workspace=None, wrap=None):
    """Run ``plan`` on 2-D x [M, K] (contiguous last dim); writes and returns out [M, N].

    ``workspace(numel, tiles) -> (fp32 workspace, int32 tickets)``, zeroed, for a caller that allocates
    per call (default: the persistent per-device pair, which the kernels leave zeroed).
    ``wrap(plan) -> (kernel, kwargs)``: what is launched with which keywords (default ``plan.fn`` with
    ``plan.kwargs`` through the plan's :class:`~.compiled.KernelLauncher`; the export's triton_op launches
    through ``torch.library.wrap_triton``)."""
    if plan.x_regroup:
        M, K = x2d.shape
        bk = plan.x_regroup
        x2d = x2d.reshape(M, K // bk, bk // 8, 8).transpose(2, 3).reshape(M, K)   # a copy
    if plan.x_kplanes:
        x2d = kplanes_regroup(x2d, plan.x_kplanes)
    if plan.x_aligned and (x2d.data_ptr() % 16 or x2d.stride(0) % 16):   # what Triton specialises on
        x2d = x2d.clone(memory_format=torch.contiguous_format)
    ops = Operands(x2d, qweight, qzeros, scales, bias, out)
    if plan.workspace is not None:
        if workspace is not None:
            ops.workspace, ops.tickets = workspace(*plan.workspace)
        else:
            ops.workspace, ops.tickets = _workspace().get(x2d.device, *plan.workspace, plan.workspace_kind)
    if wrap is not None:
        fn, kwargs = wrap(plan)
        start = lambda *args: fn[plan.grid](*args, **kwargs)          # noqa: E731
    else:
        start = plan.runtime.get("launcher") or plan.runtime.setdefault(
            "launcher", KernelLauncher(plan.fn, plan.grid, plan.kwargs))
    if plan.dense_weight:
        K, N = x2d.shape[1], qweight.shape[1]
        ops.dense = torch.empty((K, N), dtype=x2d.dtype, device=qweight.device)
        start(*plan.arguments(ops))
        if bias is None:
            return torch.mm(x2d, ops.dense, out=out)
        return torch.addmm(bias, x2d, ops.dense, out=out)
    start(*plan.arguments(ops))
    return out


@functools.lru_cache(maxsize=4096)
def planned(kernel: str, config, launch_opts, problem: Problem, target, interpret: bool) -> LaunchPlan:
    """:func:`~awq_compile.kernels.spec.plan_launch` for a kernel id, cached per (config, problem, target)."""
    return plan_launch(get_spec(kernel), config, launch_opts, problem, target, interpret=interpret)



def run(kernel: str, config, launch_opts: LaunchOptions | None, x2d, qweight, qzeros, scales, bias, out,
        group_size: int, target, *, interpret: bool, layout: str = "standard"):
    """Run ``kernel`` with ``config`` on x [M, K] for ``target`` (the plan's target) with the weight in
    ``layout``; writes out [M, N]."""
    M, K = x2d.shape
    problem = Problem(K, qweight.shape[1], group_size, qzeros is not None, str(x2d.dtype)[6:],
                      has_bias=bias is not None, m=M, layout=layout)
    plan = planned(kernel, config, launch_opts if launch_opts is not None else LaunchOptions(), problem, target,
                 interpret)
    return launch(plan, x2d, qweight, qzeros, scales, bias, out)


def reserve_for_plan(plan, problem: Problem, device) -> None:
    """Allocate now (outside graph capture) the ``slots`` workspace every entry of ``plan`` (a
    :class:`~awq_compile.kernels.registry.Plan`) can need for ``problem`` at any M of its bucket up to
    :data:`RESERVE_ROWS` (the ``atomic`` one is :func:`reserve_workspace`'s)."""
    n, t = _slots_need(plan, problem)
    if n:
        _workspace().get(torch.device(device), n, t, "slots")


@functools.lru_cache(maxsize=256)
def _slots_need(plan, problem: Problem) -> tuple[int, int]:
    """(fp32 elements, tickets) of the ``slots`` workspace ``plan``'s entries need for ``problem`` up to
    :data:`RESERVE_ROWS` rows -- computed once per (plan, problem), however many layers share them.  An entry's
    workspace kind is fixed by its config, so one launch plan tells whether its bucket needs the M sweep."""
    lo, n, t = 1, 0, 0
    for e in plan.entries:
        hi = min(e.m_max if e.m_max is not None else RESERVE_ROWS, RESERVE_ROWS)
        if e.config is not None and lo <= hi:
            spec = get_spec(e.kernel)
            opts = e.launch or LaunchOptions()
            # plan_launch itself, not the launcher's cache: these M are not calls, and must not evict them
            lps = (plan_launch(spec, e.config, opts, problem.with_m(m).with_layout(plan.layout), plan.target)
                   for m in range(lo, hi + 1))
            first = next(lps)
            if first.workspace_kind == "slots":
                for lp in (first, *lps):
                    if lp.workspace is not None:
                        n, t = max(n, lp.workspace[0]), max(t, lp.workspace[1])
        lo = (e.m_max or 0) + 1
    return n, t
