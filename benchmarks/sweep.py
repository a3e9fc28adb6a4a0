"""What the device sweeps (``benchmarks.wide_sweep``, ``benchmarks.gemv_sweep``) share: compiling every config
in worker processes first, timing one config on NaN-poisoned outputs after its float64 check, and the
relaunch stress of a config.  ``run_cfg(spec, x, std, out, target)`` is the sweep's own launcher (a
module-level function, so worker processes can import it)."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import multiprocessing as mp

import torch

from .common import graph_time_us, rel_err


def shape_weights(K: int, N: int, G: int, dtype):
    """The weights one (shape, dtype) row of a sweep times over: R random AWQ copies (>= 256 MB of codes),
    their standard-layout repacks, the float64 reference weight of the first, and enough dequantised
    copies for cuBLAS -- (srcs, std, w64, dense)."""
    from awq_compile.formats.standard import dequantize_standard

    from .common import AWQ, copies_for, random_awq

    R = copies_for(K * N // 2)
    srcs = [random_awq(K, N, G, dtype=dtype, seed=r) for r in range(R)]
    std = [AWQ.to_standard(*s) for s in srcs]
    w64 = dequantize_standard(std[0].qweight, std[0].qzeros, std[0].scales.double(), G, torch.float64)
    dense = [AWQ.to_unpacked(*srcs[r % R]).dequantize(dtype) for r in range(copies_for(K * N * 2))]
    return srcs, std, w64, dense


def sweep_meta(target, **extra) -> dict:
    """The run's facts every sweep records: date, device, SM count, torch / Triton versions, target."""
    import datetime

    import triton

    dev = torch.cuda.get_device_properties(0)
    return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"), device=dev.name,
                sms=dev.multi_processor_count, torch=torch.__version__, triton=triton.__version__,
                target=str(target), **extra)


def compile_worker(run_cfg, K: int, N: int, M: int, G: int, items):
    """Compile (spec, dtype) items by launching each once on a small K x N problem at M (the same
    specialisation as the timed shapes): [(spec, dtype name, error or None)]."""
    from awq_compile.formats import get_format
    from awq_compile.target import detect

    from .common import random_awq

    target = detect(torch.device("cuda"))
    res = []
    for spec, dname in items:
        dtype = getattr(torch, dname)
        std = get_format("awq").to_standard(*random_awq(K, N, G, dtype=dtype))
        x = torch.randn(M, K, dtype=dtype, device="cuda")
        out = torch.empty(M, N, dtype=dtype, device="cuda")
        try:
            run_cfg(spec, x, std, out, target)
            torch.cuda.synchronize()
            res.append((spec, dname, None))
        except Exception as e:
            res.append((spec, dname, f"{type(e).__name__}: {str(e)[:200]}"))
    return res


def precompile(run_cfg, specs: list[str], dtypes: list[str], jobs: int, *, K: int, N: int, M: int, G: int) -> dict:
    """Compile every (spec, dtype) in ``jobs`` spawned processes (Triton's cache then serves the timing
    process); {(spec, dtype name): error} of those that failed, each printed."""
    items = [(s, d) for s in specs for d in dtypes]
    chunks = [items[i::jobs] for i in range(min(jobs, len(items)))]
    worker = functools.partial(compile_worker, run_cfg, K, N, M, G)
    failed = {}
    with cf.ProcessPoolExecutor(max_workers=len(chunks), mp_context=mp.get_context("spawn")) as ex:
        for res in ex.map(worker, chunks):
            for spec, dname, err in res:
                if err:
                    failed[(spec, dname)] = err
                    print(f"# compile {spec} {dname} FAILED {err}", flush=True)
    return failed


def time_config(run_cfg, spec: str, x, std: list, ref, M: int, N: int, dtype, tol: float, target, row: dict,
                width: int) -> float | None:
    """Check ``spec`` against float64 on a NaN-poisoned output, then time it over the weight copies ``std``;
    fills ``row`` (err / us / error) and returns µs per call, or None when wrong or failed (printed)."""
    out = torch.full((M, N), float("nan"), dtype=dtype, device="cuda")
    try:
        run_cfg(spec, x, std[0], out, target)
        torch.cuda.synchronize()
        row["err"] = err = rel_err(out, ref)
        if not err < tol:
            print(f"    {spec:{width}s} WRONG err={err:.2e}", flush=True)
            return None
        outs = [torch.empty((M, N), dtype=dtype, device="cuda") for _ in std]
        us = graph_time_us([(lambda w=w, o=o: run_cfg(spec, x, w, o, target)) for w, o in zip(std, outs)])
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        print(f"    {spec:{width}s} FAILED {row['error']}", flush=True)
        return None
    row["us"] = us
    return us


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
