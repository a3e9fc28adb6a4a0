"""What the device sweeps (``benchmarks.wide_sweep``, ``benchmarks.gemv_sweep``) share: the weights of one
shape in the layouts a sweep runs (``--layout``), compiling every config in worker processes first, the
spec's refusal of a config for a (layout, shape, M), timing one config on NaN-poisoned outputs after its
float64 check, and the relaunch stress of a config.  ``run_cfg(spec, x, w, out, target)`` is the sweep's own
launcher (a module-level function, so worker processes can import it) calling :func:`launch_resolved` with
its own spelling's ``(kernel, config, launch)``; ``w`` is a :class:`~awq_compile.formats.packed.Packed` whose
``layout`` goes on to ``awq_compile.kernels.triton.launch.run``."""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
import multiprocessing as mp

import torch

from .common import graph_time_us, rel_err

LAYOUT_CHOICES = ("standard", "kplanes", "both")


def layouts_of(choice: str) -> tuple[str, ...]:
    """The packed layouts a ``--layout`` value runs the configs on."""
    if choice == "both":
        return ("standard", "kplanes")
    if choice not in LAYOUT_CHOICES:
        raise ValueError(f"--layout {choice!r}: one of {', '.join(LAYOUT_CHOICES)}")
    return (choice,)


def add_layout_option(ap) -> None:
    ap.add_argument("--layout", choices=LAYOUT_CHOICES, default="standard",
                    help="the weight layout(s) every config runs on (each shape's weights are converted once); "
                         "'ours' is the shipped plan in whatever layout it chooses, 'ours_std' the same op planned "
                         "for the standard layout")


@dataclasses.dataclass
class ShapeWeights:
    """The weights one (shape, dtype) row of a sweep times over: R random AWQ copies ``srcs`` (>= 256 MB of
    codes), their repacks per layout ``packed[layout]`` (standard, and kplanes converted from it), the float64
    reference weight of the first copy and ``dense`` dequantised copies for cuBLAS."""

    srcs: list
    packed: dict
    w64: torch.Tensor
    dense: list


def shape_weights(K: int, N: int, G: int, dtype, layouts=("standard",), *, device="cuda", copies: int | None = None,
                  dense: bool = True) -> ShapeWeights:
    """:class:`ShapeWeights` of a K x N weight: every layout in ``layouts`` converted once, through
    ``awq_compile.formats.convert`` (the project's one conversion route)."""
    from awq_compile.formats.convert import convert

    from .common import AWQ, copies_for, random_awq

    R = copies or copies_for(K * N // 2)
    srcs = [random_awq(K, N, G, dtype=dtype, device=device, seed=r) for r in range(R)]
    std = [AWQ.to_standard(*s) for s in srcs]
    packed = {lay: (std if lay == "standard" else [convert(w, lay) for w in std]) for lay in layouts}
    w64 = AWQ.to_unpacked(*srcs[0]).dequantize(torch.float64)
    dn = [AWQ.to_unpacked(*srcs[r % R]).dequantize(dtype) for r in range(copies or copies_for(K * N * 2))] \
        if dense else []
    return ShapeWeights(srcs, packed, w64, dn)


def refusal(kernel: str, cfg, launch, *, K: int, N: int, M: int, G: int, dtype: str, layout: str, target) -> str | None:
    """Why the spec refuses ``cfg`` for this (layout, shape, M) on ``target`` (what the planner would say:
    the kernel's own reason, then the config's pruning rule), or None."""
    from awq_compile.kernels.problem import Problem
    from awq_compile.kernels.specs import get_spec

    p = Problem(K, N, G, True, dtype, m=M, layout=layout)
    return get_spec(kernel).reason(p, target) or cfg.check(launch, p, target.shared_memory)


def compile_ms(ms) -> dict:
    """{M: the M each is compiled at}: Triton specialises an integer argument equal to 1 and one divisible by
    16, so one M of each such class (the smallest asked for) compiles what every M of the class runs."""
    cls = lambda m: 1 if m == 1 else (16 if m % 16 == 0 else 0)      # noqa: E731
    rep = {}
    for m in sorted(ms):
        rep.setdefault(cls(m), m)
    return {m: rep[cls(m)] for m in ms}


def sweep_meta(target, **extra) -> dict:
    """The run's facts every sweep records: date, device, SM count, torch / Triton versions, target."""
    import datetime

    import triton

    dev = torch.cuda.get_device_properties(0)
    return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"), device=dev.name,
                sms=dev.multi_processor_count, torch=torch.__version__, triton=triton.__version__,
                target=str(target), **extra)


def compile_worker(run_cfg, K: int, N: int, G: int, items):
    """Compile (spec, dtype name, layout, M) items by launching each once on a small K x N problem in that
    layout at that M (the same specialisation as the timed shapes): [(item, error or None)]."""
    from awq_compile.formats import get_format
    from awq_compile.formats.convert import convert
    from awq_compile.target import detect

    from .common import random_awq

    target = detect(torch.device("cuda"))
    res = []
    weights = {}
    for item in items:
        spec, dname, layout, M = item
        dtype = getattr(torch, dname)
        if (dname, layout) not in weights:
            std = get_format("awq").to_standard(*random_awq(K, N, G, dtype=dtype))
            weights[(dname, layout)] = std if layout == "standard" else convert(std, layout)
        x = torch.randn(M, K, dtype=dtype, device="cuda")
        out = torch.empty(M, N, dtype=dtype, device="cuda")
        try:
            run_cfg(spec, x, weights[(dname, layout)], out, target)
            torch.cuda.synchronize()
            res.append((item, None))
        except Exception as e:
            res.append((item, f"{type(e).__name__}: {str(e)[:200]}"))
    return res


def precompile(run_cfg, items, jobs: int, *, K: int, N: int, G: int) -> dict:
    """Compile every (spec, dtype name, layout, M) item in ``jobs`` spawned processes (Triton's cache then
    serves the timing process); {item: error} of those that failed, each printed."""
    items = sorted(set(items))
    chunks = [items[i::jobs] for i in range(min(jobs, len(items)))]
    worker = functools.partial(compile_worker, run_cfg, K, N, G)
    failed = {}
    if not chunks:
        return failed
    with cf.ProcessPoolExecutor(max_workers=len(chunks), mp_context=mp.get_context("spawn")) as ex:
        for res in ex.map(worker, chunks):
            for item, err in res:
                if err:
                    failed[item] = err
                    print(f"# compile {' '.join(map(str, item))} FAILED {err}", flush=True)
    return failed


def time_config(run_cfg, spec: str, x, std: list, ref, M: int, N: int, dtype, tol: float, target, row: dict,
                label: str) -> float | None:
    """Check ``spec`` against float64 on a NaN-poisoned output, then time it over the weight copies ``std``
    (one layout's :class:`~awq_compile.formats.packed.Packed` copies); fills ``row`` (err / us / error) and
    returns µs per call, or None when wrong or failed (printed after ``label``)."""
    out = torch.full((M, N), float("nan"), dtype=dtype, device="cuda")
    try:
        run_cfg(spec, x, std[0], out, target)
        torch.cuda.synchronize()
        row["err"] = err = rel_err(out, ref)
        if not err < tol:
            print(f"    {label} WRONG err={err:.2e}", flush=True)
            return None
        outs = [torch.empty((M, N), dtype=dtype, device="cuda") for _ in std]
        us = graph_time_us([(lambda w=w, o=o: run_cfg(spec, x, w, o, target)) for w, o in zip(std, outs)])
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        print(f"    {label} FAILED {row['error']}", flush=True)
        return None
    row["us"] = us
    return us


def launch_resolved(resolved: tuple, x, w, out, group_size: int, target):
    """Launch ``resolved`` = (kernel id, config, launch options) on x with the packed weight ``w`` (in its
    layout), writing ``out``: the body of every sweep's ``run_cfg``.  ``interpret`` follows the process (the
    planner picks NVIDIA-only code, e.g. the split-K fence, only when Triton's interpreter is not running)."""
    from awq_compile.kernels.triton.launch import run
    from awq_compile.target import interpreter_active

    kernel, cfg, launch = resolved
    return run(kernel, cfg, launch, x, w.qweight, w.qzeros, w.scales, None, out, group_size, target,
               interpret=interpreter_active(), layout=w.layout)


def run_config(run_cfg, spec: str, x, std: list, ref, M: int, N: int, dtype, tol: float, target, row: dict,
               label: str, *, refused: str | None, failed: str | None) -> float | None:
    """One config of a sweep row: REFUSED (``refused``, the spec's reason for this layout / shape / M) or FAILED
    (``failed``, its compile error in the workers) printed and recorded in ``row``, else :func:`time_config`;
    the µs per call, or None when it was not timed."""
    if refused:
        row["refused"] = refused
        print(f"    {label} REFUSED {refused}", flush=True)
        return None
    if failed is not None:
        row["error"] = f"compile failed: {failed}"
        print(f"    {label} FAILED {row['error']}", flush=True)
        return None
    return time_config(run_cfg, spec, x, std, ref, M, N, dtype, tol, target, row, label)


def stress(run_cfg, spec: str, x, std, w64, M: int, K: int, N: int, dtype, target, n: int, tol: float) -> dict:
    """Relaunch ``spec`` ``n`` times on fresh NaN poison, every other launch with fresh x: a split-K race
    shows as a wrong launch."""
    out = torch.empty((M, N), dtype=dtype, device="cuda")
    ref = x.double() @ w64
    errs, bad = [], 0
    for i in range(n):
        xs = torch.randn(M, K, dtype=dtype, device="cuda") if i % 2 else x
        r_ = ref if xs is x else xs.double() @ w64
        out.fill_(float("nan"))
        run_cfg(spec, xs, std, out, target)
        e = rel_err(out, r_)
        errs.append(e)
        bad += not (e < tol)
    return dict(launches=n, wrong=bad, max_err=max(errs))


def plan_items(resolve, specs_at, *, shapes, ms, dtype: str, layouts, G: int, target):
    """What one dtype's pass of a sweep compiles and what it skips: (compile items, refusals).

    ``resolve(spec) -> (kernel, config, launch options)``; ``specs_at(K, N, M, layout)`` the configs timed there.  Items are
    (spec, dtype, layout, M to compile at) of every config some (shape, M) accepts in that layout; refusals
    {(spec, layout, K, N, M): why} every one the spec refuses there (the sweep reports each, never silently)."""
    cm = compile_ms(ms)
    items, refused = set(), {}
    for K, N in shapes:
        for M in ms:
            for lay in layouts:
                for spec in specs_at(K, N, M, lay):
                    kernel, cfg, launch = resolve(spec)
                    why = refusal(kernel, cfg, launch, K=K, N=N, M=M, G=G, dtype=dtype, layout=lay, target=target)
                    if why:
                        refused[(spec, lay, K, N, M)] = why
                    else:
                        items.add((spec, dtype, lay, cm[M]))
    return sorted(items), refused
