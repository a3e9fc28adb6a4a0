"""Device sweep of ``triton_gemm_wide`` / ``triton_gemm_rs`` next to the shipped plan and fp16 cuBLAS, in one process.

``python -m benchmarks.wide_sweep [--shapes ...] [--ms 64,256,1024,4096] [--dtypes float16] [--configs SET]
[--layout standard|kplanes|both] [--jobs 12] [--stress 10] [--json out.json]``

Same method as ``benchmarks.gemm`` (one CUDA graph over R weight copies >= 256 MB, median of replays / R).
Each shape's weights are converted once into every layout of ``--layout`` and each config runs on each
(``layout=`` to ``launch.run``; a K tile under 128 rows on kplanes has x regrouped by the launch); a config
the spec refuses for a (layout, shape, M) is printed as REFUSED with the reason, never timed.  Every config
is first compiled in ``--jobs`` worker processes (Triton's cache then serves the timing process), then per
(shape, M): ``ours`` (the op with today's plan, in its layout), ``ours_std`` (the same op planned for the
standard layout), ``cublas`` (fp16 ``x @ W``) and each config -- relative error against float64 on a
NaN-poisoned output before it is timed; every row says its layout.  The best config per (row, layout) is
relaunched ``--stress`` times on fresh poison (half with fresh x).  Config spelling:
``BMxBNxBK:warps:stages[:t][:p1][:sk2][:g4][:x]`` (t = TRANS, pN = PERSIST N, skN = SPLIT_K N, gN = GROUP_M N,
x = XPERM for the plane GEMM); a two-number tile ``BMxBN:warps:stages[:sk2][:d2][:ps2][:u][:a]`` is the register-operand
Gluon GEMM ``triton_gemm_rs`` (its K tile is 128; stages = its ring depth; dN = MMA_DEPTH N; psN = PER_SM N, the
persistent stripe grid; u = UNROLL, the ring unrolled into one allocation per slot; a = ACC_SCALE, the scale
applied to a K tile's fp32 partial; kplanes only).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys

import torch

from .sweep import (add_layout_option, launch_resolved, compile_ms, layouts_of, plan_items, precompile, run_config,
                    shape_weights, stress, sweep_meta)

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
    # the register-operand GEMM (2026-12-02): token tiles 64..256, split-K for the few-column shapes
    "rs": ("256x128:8:3", "128x128:8:4", "128x128:8:4:sk2", "256x128:8:3:sk2", "128x64:4:4", "128x64:4:4:sk2",
           "64x64:4:4", "64x64:4:4:sk2", "64x64:4:4:sk4", "64x64:4:5:d2", "64x128:4:4:sk2", "32x64:4:6:sk2",
           "16x64:4:8:sk4"),
    # the register-operand GEMM at decode sizes (2026-12-02, issue 11): wide weight tiles (16 KB of words per K
    # tile at BLOCK_N 256) in a deep ring, split-K chosen so that ~128 programs cover each goal shape
    "rs_small": ("16x256:4:4:sk2", "16x256:4:6:sk2", "16x256:8:6:sk2", "16x256:4:6:sk4", "16x256:8:6:sk4",
                 "16x256:4:6:sk8", "16x256:8:6:sk8", "16x128:4:6", "16x128:4:6:sk2", "16x128:4:8:sk4",
                 "16x128:8:6:sk4", "8x256:4:6:sk2", "8x256:8:6:sk4", "32x256:8:5:sk2", "32x128:4:6:sk2"),
    # its persistent grid (PER_SM programs per SM over contiguous (tile, K tile) runs), M 1..64
    "rs_ps": ("16x256:8:4:ps1", "16x256:8:4:ps2", "16x256:4:4:ps2", "16x128:4:4:ps2", "16x128:4:4:ps4",
              "16x128:8:4:ps2", "16x128:4:6:ps3", "8x256:8:4:ps2", "32x128:4:4:ps2", "32x256:8:4:ps2",
              "64x64:4:4:ps2", "64x64:4:4:ps3", "64x128:4:4:ps2", "64x128:8:4:ps2", "64x256:8:3:ps1"),
}


def parse(spec: str) -> dict:
    parts = spec.split(":")
    tile = [int(v) for v in parts[0].split("x")]
    cfg = dict(BLOCK_M=tile[0], BLOCK_N=tile[1], num_warps=int(parts[1]), num_stages=int(parts[2]))
    if len(tile) == 3:
        cfg["BLOCK_K"] = tile[2]
    for flag in parts[3:]:
        if flag.startswith("d") and len(tile) == 2:
            cfg["MMA_DEPTH"] = int(flag[1:])
        elif flag == "t":
            cfg["TRANS"] = 1
        elif flag.startswith("ps") and len(tile) == 2:
            cfg["PER_SM"] = int(flag[2:])
        elif flag.startswith("p"):
            cfg["PERSIST"] = int(flag[1:])
        elif flag.startswith("sk"):
            cfg["SPLIT_K"] = int(flag[2:])
        elif flag.startswith("g"):
            cfg["GROUP_M"] = int(flag[1:])
        elif flag == "u" and len(tile) == 2:
            cfg["UNROLL"] = 1
        elif flag == "a" and len(tile) == 2:
            cfg["ACC_SCALE"] = 1
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


def resolve(spec: str):
    """(kernel id, typed config, launch options) of a spelling."""
    from awq_compile.kernels.specs import get_spec

    kernel = "triton_gemm_rs" if spec.split(":")[0].count("x") == 1 else "triton_gemm_wide"
    cfg, launch = get_spec(kernel).parse(parse(spec), spec, backend="cuda", table=False)
    return kernel, cfg, launch


def _run_cfg(spec: str, x, w, out, target):
    return launch_resolved(resolve(spec), x, w, out, G, target)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in SHAPES))
    ap.add_argument("--ms", default="64,256,1024,4096")
    ap.add_argument("--dtypes", default="float16")
    ap.add_argument("--configs", default="auto", help="auto (small for M<=64, large above), a set name or specs")
    add_layout_option(ap)
    ap.add_argument("--jobs", type=int, default=12)
    ap.add_argument("--tol", type=float, default=1e-3, help="fp16; bf16 outputs get 10x (their rounding is 4e-3)")
    ap.add_argument("--stress", type=int, default=10)
    ap.add_argument("--json", default=None)
    return ap


def main(argv=None):
    args = parser().parse_args(argv)

    import awq_compile.runtime.op  # noqa: F401
    from awq_compile.kernels.problem import Problem
    from awq_compile.kernels.registry import select
    from awq_compile.target import detect

    from .common import graph_time_us, rel_err

    ms = [int(m) for m in args.ms.split(",")]
    dtypes = args.dtypes.split(",")
    layouts = layouts_of(args.layout)
    shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(",")]
    for M in ms:
        for spec in configs_for(M, args.configs):
            resolve(spec)
    cm = compile_ms(ms)
    target = detect(torch.device("cuda"))
    items, refused = [], {}
    for dname in dtypes:
        it, rf = plan_items(resolve, lambda K, N, M, lay: configs_for(M, args.configs), shapes=shapes, ms=ms,
                            dtype=dname, layouts=layouts, G=G, target=target)
        items += it
        refused.update({(dname,) + k: v for k, v in rf.items()})
    t0 = datetime.datetime.now()
    failed = precompile(_run_cfg, items, args.jobs, K=512, N=512, G=G)
    print(f"# compiled {len(items)} (config, dtype, layout, M class) items in "
          f"{(datetime.datetime.now() - t0).total_seconds():.0f} s; {len(refused)} refused by the spec (listed per row)",
          flush=True)
    meta = sweep_meta(target, layouts=list(layouts))
    print(f"# {meta}", flush=True)
    rows = []
    for dname in dtypes:
        dtype = getattr(torch, dname)
        tol = args.tol * (10 if dname == "bfloat16" else 1)
        for K, N in shapes:
            W = shape_weights(K, N, G, dtype, layouts)
            plan = select(Problem(K, N, G, True, dname), target)
            plan_std = select(Problem(K, N, G, True, dname), target, layout="standard")
            op = torch.ops.awq_compile.w4a16_linear
            for M in ms:
                x = torch.randn(M, K, dtype=dtype, device="cuda")
                ref = x.double() @ W.w64
                base = dict(K=K, N=N, M=M, dtype=dname)
                cols = {}
                for name, pl in (("ours", plan), ("ours_std", plan_std)):
                    text = pl.encode()
                    calls = [(lambda s=s, t=text: op(x, s[0], s[1], s[2], None, [], "bench", "awq", G, t, ""))
                             for s in W.srcs]
                    cols[name] = graph_time_us(calls)
                    rows.append(dict(base, cfg=name, layout=pl.layout, us=cols[name], err=rel_err(calls[0](), ref),
                                     kernel=pl.entry_for(M).kernel, config=pl.entry_for(M).config_dict))
                ours, ours_std = cols["ours"], cols["ours_std"]
                cub = graph_time_us([(lambda w=w: x @ w) for w in W.dense])
                rows.append(dict(base, cfg="cublas", layout="dense", us=cub))
                print(f"  {dname} {K}x{N} M={M:5d} ours {ours:8.2f} [{plan.layout}]  ours_std {ours_std:8.2f}  "
                      f"cublas {cub:8.2f}", flush=True)
                for lay in layouts:
                    best = None
                    for spec in configs_for(M, args.configs):
                        row = dict(base, cfg=spec, layout=lay)
                        rows.append(row)
                        label = f"{lay:8s} {spec:26s}"
                        us = run_config(_run_cfg, spec, x, W.packed[lay], ref, M, N, dtype, tol, target, row, label,
                                        refused=refused.get((dname, spec, lay, K, N, M)),
                                        failed=failed.get((spec, dname, lay, cm[M])))
                        if us is None:
                            continue
                        print(f"    {label} {us:8.2f} us  ({us / cub:4.2f}x cuBLAS, {us / ours:4.2f}x ours, "
                              f"{us / ours_std:4.2f}x ours_std)  err {row['err']:.1e}", flush=True)
                        if best is None or us < best[0]:
                            best = (us, spec, row)
                    if best is not None and args.stress:
                        us, spec, row = best
                        row["stress"] = st = stress(_run_cfg, spec, x, W.packed[lay][0], W.w64, M, K, N, dtype, target,
                                                    args.stress, tol)
                        print(f"  best {dname} {K}x{N} M={M} {lay}: {spec} {us:.2f} us ({us / cub:.2f}x cuBLAS); "
                              f"stress {st['launches']}: {st['wrong']} wrong, max err {st['max_err']:.2e}", flush=True)
            del W
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
    print("\nbest per row (µs): dtype shape M | ours ours_std cublas | per layout: best wide config, x cuBLAS")
    keyed: dict = {}
    for r in rows:
        keyed.setdefault((r["dtype"], r["K"], r["N"], r["M"]), []).append(r)
    for (dn, K, N, M), rs in keyed.items():
        get = lambda name: next(r["us"] for r in rs if r["cfg"] == name)   # noqa: E731
        o, os_, c = get("ours"), get("ours_std"), get("cublas")
        line = f"{dn:8s} {K}x{N:<6} M={M:5d} | {o:8.2f} {os_:8.2f} {c:8.2f} |"
        for lay in layouts:
            w = [r for r in rs if r["layout"] == lay and r["cfg"] not in ("ours", "ours_std", "cublas") and r.get("us")]
            b = min(w, key=lambda r: r["us"]) if w else None
            line += f" {lay}: {b['us']:8.2f} {b['us'] / c:4.2f}x {b['cfg']}" if b else f" {lay}: -"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
