"""Device sweep of ``triton_gemm_wide`` next to the shipped plan and fp16 cuBLAS, in one process.

``python -m benchmarks.wide_sweep [--shapes ...] [--ms 64,256,1024,4096] [--dtypes float16] [--configs SET]
[--jobs 12] [--stress 10] [--json out.json]``

Same method as ``benchmarks.gemm`` (one CUDA graph over R weight copies >= 256 MB, median of replays / R).
Every config is first compiled in ``--jobs`` worker processes (Triton's cache then serves the timing
process), then per (shape, M): ``ours`` (the op with today's plan), ``cublas`` (fp16 ``x @ W``) and each
config -- relative error against float64 on a NaN-poisoned output before it is timed.  The best config
per row is relaunched ``--stress`` times on fresh poison (half with fresh x).  Config spelling:
``BMxBNxBK:warps:stages[:t][:p1][:sk2][:g4][:x]`` (t = TRANS, pN = PERSIST N, skN = SPLIT_K N, gN = GROUP_M N,
x = XPERM for the plane GEMM).
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

SETS = {
    # sweep 1 (2026-12-01 12:37 UTC): TRANS wins everywhere; 256x128x64 (256 tokens per tile) from M = 256 up
    "small1": ("64x128x64:4:4:t", "64x128x128:4:3:t", "64x64x128:4:4:t", "64x256x64:8:3:t", "64x128x64:4:4",
               "64x128x128:4:3"),
    "large1": ("128x256x64:8:3:t", "128x128x64:8:3:t", "128x128x64:8:4:t", "128x128x64:4:3:t", "256x128x64:8:3:t",
               "128x128x128:8:3:t", "64x256x64:8:3:t", "128x256x64:8:3:t:p1", "128x128x64:8:3:t:p1",
               "128x256x64:8:3", "128x256x64:8:4", "128x128x64:4:3", "256x128x64:8:3"),
    # sweep 2: split-K for the few-tile shapes, two 4-warp programs per SM, 256-token tiles
    "small2": ("64x64x128:4:4:t", "64x64x128:4:4:t:sk2", "64x64x128:4:4:t:sk4", "64x128x64:4:4:t:sk2",
               "64x128x128:4:4:t:sk2", "64x64x64:4:4:t:sk2", "64x128x128:4:3"),
    "large2": ("256x128x64:8:3:t", "256x128x64:8:2:t", "256x64x64:4:3:t", "256x64x64:4:2:t", "128x64x64:4:3:t",
               "256x64x128:4:2:t", "128x128x64:4:3:t", "256x128x64:8:3:t:sk2", "128x128x64:4:3:t:sk2",
               "256x64x64:4:3:t:sk2", "256x128x64:8:3:t:g16", "256x128x64:8:3:t:p1"),
    # sweep 3 (every grid in the loop form): decode-sized token tiles, BLOCK_K 32, more split-K
    "tiny": ("16x128x128:4:4:t:sk4", "16x64x128:4:4:t:sk4", "16x128x128:4:4:t:sk8", "16x64x128:4:4:t:sk2",
             "16x128x64:4:4:t:sk4", "32x128x128:4:4:t:sk4", "32x64x128:4:4:t:sk2"),
    "small": ("64x64x128:4:4:t", "64x64x128:4:4:t:sk2", "64x64x128:4:4:t:sk4", "64x64x64:4:4:t:sk2",
              "64x128x128:4:4:t:sk2", "64x32x128:4:4:t", "64x64x128:4:5:t:sk2", "128x64x64:4:3:t"),
    "large": ("256x128x64:8:3:t", "256x128x64:8:4:t", "256x128x64:8:3:t:p1", "256x128x32:8:4:t",
              "256x128x32:8:4:t:p1", "256x64x64:4:3:t", "128x128x64:4:3:t", "256x128x64:8:3:t:g4",
              "256x64x64:4:3:t:sk2", "128x64x64:4:3:t:sk2", "256x128x64:8:3:t:sk2"),
}


def parse(spec: str) -> dict:
    parts = spec.split(":")
    bm, bn, bk = (int(v) for v in parts[0].split("x"))
    cfg = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=int(parts[1]), num_stages=int(parts[2]))
    for flag in parts[3:]:
        if flag == "t":
            cfg["TRANS"] = 1
        elif flag.startswith("p"):
            cfg["PERSIST"] = int(flag[1:])
        elif flag.startswith("sk"):
            cfg["SPLIT_K"] = int(flag[2:])
        elif flag.startswith("g"):
            cfg["GROUP_M"] = int(flag[1:])
        elif flag == "x":
            cfg["XPERM"] = 1
        else:
            raise ValueError(f"unknown flag {flag!r} in {spec!r}")
    return cfg


def configs_for(M: int, which: str) -> list[str]:
    if which != "auto":
        return [c for name in which.split("+") for c in SETS.get(name, (name,))]
    if M <= 32:
        return list(SETS["tiny"])
    return list(SETS["small"] if M <= 128 else SETS["large"])


def _run_cfg(spec: str, x, std, out, target):
    from awq_compile.kernels.specs import get_spec
    from awq_compile.kernels.triton.launch import run

    cfg, launch = get_spec("triton_gemm_wide").parse(parse(spec), spec, backend="cuda", table=False)
    return run("triton_gemm_wide", cfg, launch, x, std.qweight, std.qzeros, std.scales, None, out, G, target,
               interpret=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in SHAPES))
    ap.add_argument("--ms", default="64,256,1024,4096")
    ap.add_argument("--dtypes", default="float16")
    ap.add_argument("--configs", default="auto", help="auto (small for M<=64, large above), a set name or specs")
    ap.add_argument("--jobs", type=int, default=12)
    ap.add_argument("--tol", type=float, default=1e-3, help="fp16; bf16 outputs get 10x (their rounding is 4e-3)")
    ap.add_argument("--stress", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import awq_compile.runtime.op  # noqa: F401
    from awq_compile.kernels.problem import Problem
    from awq_compile.kernels.registry import select
    from awq_compile.target import detect

    from .common import graph_time_us, rel_err

    ms = [int(m) for m in args.ms.split(",")]
    dtypes = args.dtypes.split(",")
    all_specs = sorted({s for M in ms for s in configs_for(M, args.configs)})
    t0 = datetime.datetime.now()
    failed = precompile(_run_cfg, all_specs, dtypes, args.jobs, K=512, N=512, M=64, G=G)
    print(f"# compiled {len(all_specs)} configs x {len(dtypes)} dtypes in "
          f"{(datetime.datetime.now() - t0).total_seconds():.0f} s", flush=True)
    target = detect(torch.device("cuda"))
    meta = sweep_meta(target)
    print(f"# {meta}", flush=True)
    rows = []
    for dname in dtypes:
        dtype = getattr(torch, dname)
        tol = args.tol * (10 if dname == "bfloat16" else 1)
        for shape in args.shapes.split(","):
            K, N = (int(v) for v in shape.split("x"))
            srcs, std, w64, fp16 = shape_weights(K, N, G, dtype)
            enc = select(Problem(K, N, G, True, dname), target).encode()
            op = torch.ops.awq_compile.w4a16_linear
            for M in ms:
                x = torch.randn(M, K, dtype=dtype, device="cuda")
                ref = x.double() @ w64
                base = dict(K=K, N=N, M=M, dtype=dname)
                calls = [(lambda s=s: op(x, s[0], s[1], s[2], None, [], "bench", "awq", G, enc, "")) for s in srcs]
                ours = graph_time_us(calls)
                cub = graph_time_us([(lambda w=w: x @ w) for w in fp16])
                rows.append(dict(base, cfg="ours", us=ours, err=rel_err(calls[0](), ref)))
                rows.append(dict(base, cfg="cublas", us=cub))
                print(f"  {dname} {K}x{N} M={M:5d} ours {ours:8.2f}  cublas {cub:8.2f}", flush=True)
                best = None
                for spec in configs_for(M, args.configs):
                    if (spec, dname) in failed:
                        continue
                    row = dict(base, cfg=spec)
                    rows.append(row)
                    us = time_config(_run_cfg, spec, x, std, ref, M, N, dtype, tol, target, row, 26)
                    if us is None:
                        continue
                    print(f"    {spec:26s} {us:8.2f} us  ({us / cub:4.2f}x cuBLAS, {us / ours:4.2f}x ours)  "
                          f"err {row['err']:.1e}", flush=True)
                    if best is None or us < best[0]:
                        best = (us, spec, row)
                if best is not None and args.stress:
                    us, spec, row = best
                    row["stress"] = st = stress(_run_cfg, spec, x, std[0], w64, M, K, N, dtype, target, args.stress,
                                                tol)
                    print(f"  best {dname} {K}x{N} M={M}: {spec} {us:.2f} us ({us / cub:.2f}x cuBLAS); stress "
                          f"{st['launches']}: {st['wrong']} wrong, max err {st['max_err']:.2e}", flush=True)
            del srcs, std, fp16, w64
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
    print("\nbest per row (µs): dtype shape M | ours cublas | best wide config")
    keyed: dict = {}
    for r in rows:
        keyed.setdefault((r["dtype"], r["K"], r["N"], r["M"]), []).append(r)
    for (dn, K, N, M), rs in keyed.items():
        o = next(r["us"] for r in rs if r["cfg"] == "ours")
        c = next(r["us"] for r in rs if r["cfg"] == "cublas")
        w = [r for r in rs if r["cfg"] not in ("ours", "cublas") and r.get("us")]
        b = min(w, key=lambda r: r["us"]) if w else None
        print(f"{dn:8s} {K}x{N:<6} M={M:5d} | {o:8.2f} {c:8.2f} | "
              + (f"{b['us']:8.2f} {b['us'] / c:4.2f}x cuBLAS  {b['cfg']}" if b else "-"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
