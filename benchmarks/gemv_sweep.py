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
import datetime
import json
import sys

import torch

from .sweep import precompile, shape_weights, stress, sweep_meta, time_config

SHAPES = ((4096, 14336), (14336, 4096), (8192, 8192))
G = 128
KERNELS = {"gemv": "triton_gemv", "stream": "triton_gemv_stream"}

SETS = {
    # the shipped M = 1 configs (sm90 "3.6" table before this work), timed as configs
    "shipped": ("gemv:1024x32:w4:sk32:fma", "gemv:256x32:w2:sk32", "stream:256x128:w4:sk16"),
    # 2026-12-01 night: a grid over the GEMV's tile, K tile, warps, split and decode for the decode's own
    # shapes (merged qkv 4096x6144, o 4096x4096, merged gate/up 4096x28672, down 14336x4096)
    "grid1": tuple(
        [f"gemv:256x{bk}:w{w}:sk{sk}{f}" for bk in (32, 64, 128) for w in (1, 2, 4) for sk in (16, 32)
         for f in ("", ":fma")]
        + [f"gemv:512x{bk}:w{w}:sk{sk}{f}" for bk in (32, 64) for w in (2, 4) for sk in (16, 32)
           for f in ("", ":fma")]
        + [f"gemv:128x{bk}:w{w}:sk32{f}" for bk in (32, 64, 128) for w in (1, 2) for f in ("", ":fma")]
        + ["gemv:1024x32:w8:sk32:fma", "gemv:1024x32:w4:sk16:fma", "stream:256x64:w2:sk16", "stream:512x64:w4:sk8"]),
    # one group per program on the long-K shapes (14336x4096: 112 groups, 8192x8192: 64), as 4096x14336 runs
    "grid2": tuple(
        [f"gemv:{bn}x128:w{w}:sk{sk}:fma" for bn in (128, 256) for w in (1, 2) for sk in (56, 64, 112)]
        + [f"gemv:256x32:w2:sk{sk}" for sk in (56, 64, 112)] + [f"gemv:512x32:w4:sk{sk}:fma" for sk in (56, 64, 112)]),
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

    import awq_compile.runtime.op  # noqa: F401
    from awq_compile.kernels.problem import Problem
    from awq_compile.kernels.registry import select
    from awq_compile.target import detect

    from .common import copy_bandwidth_gbs, graph_time_us, rel_err

    ms = [int(m) for m in args.ms.split(",")]
    dtypes = args.dtypes.split(",")
    specs = specs_for(args.configs)
    t0 = datetime.datetime.now()
    failed = precompile(_run_cfg, specs, dtypes, args.jobs, K=2048, N=1024, M=1, G=G)
    print(f"# compiled {len(specs)} configs x {len(dtypes)} dtypes in "
          f"{(datetime.datetime.now() - t0).total_seconds():.0f} s", flush=True)
    target = detect(torch.device("cuda"))
    meta = sweep_meta(target, copy_gbs=round(copy_bandwidth_gbs(), 1))
    print(f"# {meta}", flush=True)
    rows = []
    for dname in dtypes:
        dtype = getattr(torch, dname)
        tol = args.tol * (10 if dname == "bfloat16" else 1)
        for shape in args.shapes.split(","):
            K, N = (int(v) for v in shape.split("x"))
            srcs, std, w64, fp16 = shape_weights(K, N, G, dtype)
            R = len(srcs)
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
                    rows.append(row)
                    us = time_config(_run_cfg, spec, x, std, ref, M, N, dtype, tol, target, row, 34)
                    if us is None:
                        continue
                    timed.append(row)
                    print(f"    {spec:34s} {us:7.2f} us  ({us / ours:4.2f}x ours, {us / sb:4.2f}x same-bytes)  "
                          f"err {row['err']:.1e}", flush=True)
                if timed and args.stress:
                    best = min(r["us"] for r in timed)
                    for row in timed:
                        split = parse(row["cfg"])[1].get("SPLIT_K", 1)
                        if row["us"] == best or (split > 1 and row["us"] <= 1.05 * best):
                            row["stress"] = st = stress(_run_cfg, row["cfg"], x, std[0], w64, M, K, N, dtype,
                                                        target, args.stress, tol)
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


if __name__ == "__main__":
    sys.exit(main())
