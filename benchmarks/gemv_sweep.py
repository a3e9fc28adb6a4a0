"""Device sweep of the decode-sized GEMV kernels next to the shipped plan, cuBLAS and the same-bytes
ceiling, in one process.

``python -m benchmarks.gemv_sweep [--shapes ...] [--ms 1] [--dtypes float16,bfloat16] [--configs SET]
[--jobs 12] [--stress 20] [--json out.json]``

Same method as ``benchmarks.gemm`` (one CUDA graph over R weight copies >= 256 MB, median of replays / R).
Every config is first compiled in ``--jobs`` worker processes (Triton's cache then serves the timing
process), then per (dtype, shape, M): ``ours`` (the op with today's plan), ``cublas`` (``x @ W`` on the
dequantised weight), ``samebytes`` (cuBLAS on a dense weight of K/4 rows: as many bytes as the int4 codes)
and each config -- relative error against float64 on a NaN-poisoned output before it is timed.  The
best config of each row, and every config with SPLIT_K > 1 that is within 5% of it, is relaunched
``--stress`` times on fresh NaN poison (half with fresh x): a split-K race shows as a wrong launch.

Config spelling ``KERNEL:BNxBK:wWARPS[:skSPLIT][:mBLOCK_M][:fma][:rMAXNREG]`` with KERNEL ``gemv``
(triton_gemv) or ``stream`` (triton_gemv_stream); BLOCK_M is 1 unless ``:mN``.  Sweep 1 (2026-12-01) also
timed ``triton_gemv_deep`` (commit d4fb5cc..61db59f, removed after it lost everywhere; see
docs/performance.md and benchmarks/results/2026-12-01-h200-gemv-sweep1.log).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import json
import multiprocessing as mp
import sys

import torch

SHAPES = ((4096, 14336), (14336, 4096), (8192, 8192))
G = 128
KERNELS = {"gemv": "triton_gemv", "stream": "triton_gemv_stream"}

SETS = {
    # the shipped M = 1 configs (sm90 "3.6" table before this work), timed as configs
    "shipped": ("gemv:1024x32:w4:sk32:fma", "gemv:256x32:w2:sk32", "stream:256x128:w4:sk16"),
}


def parse(spec: str) -> tuple[str, dict]:
    parts = spec.split(":")
    kernel = KERNELS[parts[0]]
    bn, bk = (int(v) for v in parts[1].split("x"))
    cfg = dict(BLOCK_M=1, BLOCK_N=bn, BLOCK_K=bk, num_stages=1)
    for flag in parts[2:]:
        if flag.startswith("w"):
            cfg["num_warps"] = int(flag[1:])
        elif flag.startswith("sk"):
            cfg["SPLIT_K"] = int(flag[2:])
        elif flag.startswith("m"):
            cfg["BLOCK_M"] = int(flag[1:])
        elif flag == "fma":
            cfg["FMA_DECODE"] = 1
        elif flag.startswith("r"):
            cfg["maxnreg"] = int(flag[1:])
        else:
            raise ValueError(f"unknown flag {flag!r} in {spec!r}")
    return kernel, cfg


def specs_for(which: str) -> list[str]:
    return [c for name in which.split("+") for c in SETS.get(name, (name,))]


def _run_cfg(spec: str, x, std, out, target):
    from awq_compile.kernels.specs import get_spec
    from awq_compile.kernels.triton.launch import run

    kernel, values = parse(spec)
    cfg, launch = get_spec(kernel).parse(values, spec, backend="cuda", table=False)
    return run(kernel, cfg, launch, x, std.qweight, std.qzeros, std.scales, None, out, G, target, interpret=False)


def _compile_worker(items):
    """Compile (spec, dtype) items by launching each once on a small problem (same specialisation)."""
    from awq_compile.formats import get_format
    from awq_compile.target import detect

    from .common import random_awq

    target = detect(torch.device("cuda"))
    res = []
    for spec, dname in items:
        dtype = getattr(torch, dname)
        std = get_format("awq").to_standard(*random_awq(2048, 1024, G, dtype=dtype))
        x = torch.randn(1, 2048, dtype=dtype, device="cuda")
        out = torch.empty(1, 1024, dtype=dtype, device="cuda")
        try:
            _run_cfg(spec, x, std, out, target)
            torch.cuda.synchronize()
            res.append((spec, dname, None))
        except Exception as e:
            res.append((spec, dname, f"{type(e).__name__}: {str(e)[:200]}"))
    return res


def precompile(specs: list[str], dtypes: list[str], jobs: int) -> dict:
    items = [(s, d) for s in specs for d in dtypes]
    chunks = [items[i::jobs] for i in range(min(jobs, len(items)))]
    failed = {}
    with cf.ProcessPoolExecutor(max_workers=len(chunks), mp_context=mp.get_context("spawn")) as ex:
        for res in ex.map(_compile_worker, chunks):
            for spec, dname, err in res:
                if err:
                    failed[(spec, dname)] = err
                    print(f"# compile {spec} {dname} FAILED {err}", flush=True)
    return failed


def _stress(spec, x, std, w64, M, K, N, dtype, target, n, tol) -> dict:
    out = torch.empty((M, N), dtype=dtype, device="cuda")
    ref = x.double() @ w64
    errs, bad = [], 0
    for i in range(n):
        xs = torch.randn(M, K, dtype=dtype, device="cuda") if i % 2 else x
        r_ = ref if xs is x else xs.double() @ w64
        out.fill_(float("nan"))
        _run_cfg(spec, xs, std, out, target)
        e = rel_err(out, r_)
        errs.append(e)
        bad += not (e < tol)
    return dict(launches=n, wrong=bad, max_err=max(errs))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in SHAPES))
    ap.add_argument("--ms", default="1")
    ap.add_argument("--dtypes", default="float16,bfloat16")
    ap.add_argument("--configs", default="shipped", help="set names or specs joined by '+'")
    ap.add_argument("--jobs", type=int, default=12)
    ap.add_argument("--tol", type=float, default=1e-3, help="fp16; bf16 outputs get 10x (their rounding is 4e-3)")
    ap.add_argument("--stress", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import triton

    import awq_compile.runtime.op  # noqa: F401
    from awq_compile.formats.standard import dequantize_standard
    from awq_compile.kernels.problem import Problem
    from awq_compile.kernels.registry import select
    from awq_compile.target import detect

    from .common import AWQ, copies_for, copy_bandwidth_gbs, graph_time_us, random_awq

    ms = [int(m) for m in args.ms.split(",")]
    dtypes = args.dtypes.split(",")
    specs = specs_for(args.configs)
    t0 = datetime.datetime.now()
    failed = precompile(specs, dtypes, args.jobs)
    print(f"# compiled {len(specs)} configs x {len(dtypes)} dtypes in "
          f"{(datetime.datetime.now() - t0).total_seconds():.0f} s", flush=True)
    dev = torch.cuda.get_device_properties(0)
    target = detect(torch.device("cuda"))
    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"), device=dev.name,
                sms=dev.multi_processor_count, torch=torch.__version__, triton=triton.__version__,
                target=str(target), copy_gbs=round(copy_bandwidth_gbs(), 1))
    print(f"# {meta}", flush=True)
    rows = []
    for dname in dtypes:
        dtype = getattr(torch, dname)
        tol = args.tol * (10 if dname == "bfloat16" else 1)
        for shape in args.shapes.split(","):
            K, N = (int(v) for v in shape.split("x"))
            R = copies_for(K * N // 2)
            srcs = [random_awq(K, N, G, dtype=dtype, seed=r) for r in range(R)]
            std = [AWQ.to_standard(*s) for s in srcs]
            w64 = dequantize_standard(std[0].qweight, std[0].qzeros, std[0].scales.double(), G, torch.float64)
            R16 = copies_for(K * N * 2)
            fp16 = [AWQ.to_unpacked(*srcs[r % R]).dequantize(dtype) for r in range(R16)]
            same = [torch.randn(K // 4, N, dtype=dtype, device="cuda") for _ in range(R)]
            plan = select(Problem(K, N, G, True, dname), target)
            enc = plan.encode()
            op = torch.ops.awq_compile.w4a16_linear
            for M in ms:
                x = torch.randn(M, K, dtype=dtype, device="cuda")
                ref = x.double() @ w64
                base = dict(K=K, N=N, M=M, dtype=dname)
                e = plan.entry_for(M)
                calls = [(lambda s=s: op(x, s[0], s[1], s[2], None, [], "bench", "awq", G, enc, "")) for s in srcs]
                ours = graph_time_us(calls)
                cub = graph_time_us([(lambda w=w: x @ w) for w in fp16])
                xs = x[:, : K // 4].contiguous()
                sb = graph_time_us([(lambda w=w: xs @ w) for w in same])
                rows.append(dict(base, cfg="ours", us=ours, err=rel_err(calls[0](), ref), kernel=e.kernel,
                                 config=e.config_dict))
                rows.append(dict(base, cfg="cublas", us=cub))
                rows.append(dict(base, cfg="samebytes", us=sb))
                print(f"  {dname} {K}x{N} M={M:3d} ours {ours:7.2f} ({e.kernel} {e.config_dict})  cublas {cub:7.2f}"
                      f"  samebytes {sb:7.2f}", flush=True)
                timed = []
                for spec in specs:
                    if (spec, dname) in failed:
                        continue
                    row = dict(base, cfg=spec)
                    out = torch.full((M, N), float("nan"), dtype=dtype, device="cuda")
                    try:
                        _run_cfg(spec, x, std[0], out, target)
                        torch.cuda.synchronize()
                        row["err"] = err = rel_err(out, ref)
                        if not err < tol:
                            print(f"    {spec:34s} WRONG err={err:.2e}", flush=True)
                            rows.append(row)
                            continue
                        outs = [torch.empty((M, N), dtype=dtype, device="cuda") for _ in std]
                        us = graph_time_us([(lambda w=w, o=o: _run_cfg(spec, x, w, o, target))
                                            for w, o in zip(std, outs)])
                    except Exception as ex:
                        row["error"] = f"{type(ex).__name__}: {str(ex)[:300]}"
                        print(f"    {spec:34s} FAILED {row['error']}", flush=True)
                        rows.append(row)
                        continue
                    row["us"] = us
                    rows.append(row)
                    timed.append(row)
                    print(f"    {spec:34s} {us:7.2f} us  ({us / ours:4.2f}x ours, {us / sb:4.2f}x same-bytes)  "
                          f"err {err:.1e}", flush=True)
                if timed and args.stress:
                    best = min(r["us"] for r in timed)
                    for row in timed:
                        split = parse(row["cfg"])[1].get("SPLIT_K", 1)
                        if row["us"] == best or (split > 1 and row["us"] <= 1.05 * best):
                            row["stress"] = st = _stress(row["cfg"], x, std[0], w64, M, K, N, dtype, target,
                                                         args.stress, tol)
                            print(f"  stress {row['cfg']}: {st['launches']} launches, {st['wrong']} wrong, "
                                  f"max err {st['max_err']:.2e}", flush=True)
            del srcs, std, fp16, same, w64
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
    print("\nbest per row (µs): dtype shape M | ours cublas samebytes | best config")
    keyed: dict = {}
    for r in rows:
        keyed.setdefault((r["dtype"], r["K"], r["N"], r["M"]), []).append(r)
    for (dn, K, N, M), rs in keyed.items():
        get = lambda name: next(r["us"] for r in rs if r["cfg"] == name)   # noqa: E731
        o, c, s = get("ours"), get("cublas"), get("samebytes")
        w = [r for r in rs if r["cfg"] not in ("ours", "cublas", "samebytes") and r.get("us")]
        b = min(w, key=lambda r: r["us"]) if w else None
        print(f"{dn:8s} {K}x{N:<6} M={M:3d} | {o:7.2f} {c:7.2f} {s:7.2f} | "
              + (f"{b['us']:7.2f} {b['us'] / o:4.2f}x ours  {b['cfg']}  stress {b.get('stress')}" if b else "-"))
    return 0


def rel_err(y, ref) -> float:
    from .common import rel_err as _rel

    return _rel(y, ref)


if __name__ == "__main__":
    sys.exit(main())
