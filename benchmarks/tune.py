"""Sweep kernel configs on the GPU for the benchmark shapes; prints the best per (shape, M).

``python -m benchmarks.tune [--quick] [--json out.json]``.  Weights are rotated across R copies inside a
CUDA graph (as in benchmarks.gemm), so every figure is an HBM-streaming figure.  Each candidate is
checked against a float64 reference before it is timed; wrong ones are reported and skipped.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import torch

from awq_compile.kernels.problem import Problem
from awq_compile.kernels.specs import get_spec
from awq_compile.kernels.triton.launch import run
from awq_compile.target import Target, interpreter_active
from .common import AWQ, copies_for, dequant64, graph_time_us, random_awq, rel_err

SHAPES = ((4096, 14336), (14336, 4096), (8192, 8192))
SM90 = Target.parse("cuda:sm90")


def _parse(kid, cfg):
    return get_spec(kid).parse(cfg, f"tune candidate {kid} {cfg}", backend="cuda", table=False)


def prune(kid, cfg, *, K, N, group_size, shared_limit):
    config, launch = _parse(kid, cfg)
    return config.check(launch, Problem(K, N, group_size, True, "float16"), shared_limit)


def launch(kid, x, qweight, qzeros, scales, bias, out, group_size, cfg):
    config, opts = _parse(kid, cfg)
    return run(kid, config, opts, x, qweight, qzeros, scales, bias, out, group_size, SM90,
               interpret=interpreter_active())


def candidates_planes(M: int):
    """Nibble-plane GEMM (triton_gemm_planes), streaming GEMV (triton_gemv_stream) and FMA-decode GEMV."""
    out = []
    P = lambda **c: out.append(("triton_gemm_planes", dict(BLOCK_K=128, SCALE_AFTER=0, **c)))  # noqa: E731
    if M <= 4:
        for (bn, nw), bk, sk, nreg in itertools.product(((256, 2), (512, 4), (512, 2), (1024, 4)), (32, 64),
                                                        (16, 32), (0, 64, 80)):
            cfg = dict(BLOCK_M=1, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, FMA_DECODE=1, num_warps=nw, num_stages=1)
            if nreg:
                cfg["maxnreg"] = nreg
            out.append(("triton_gemv", cfg))
        for (bn, nw), bk, sk in itertools.product(((128, 2), (256, 4)), (64, 128), (8, 16)):
            out.append(("triton_gemv_stream", dict(BLOCK_M=1, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=nw,
                                                   num_stages=1)))
    elif M <= 16:
        for bn, sk, xp in itertools.product((128, 256), (4, 8, 16), (0, 1)):
            P(BLOCK_M=16, BLOCK_N=bn, SPLIT_K=sk, TRANS=0, XPERM=xp, num_warps=4, num_stages=3)
    elif M <= 64:
        for bm, bn, sk, tr in itertools.product((16, 32, 64), (64, 128, 256), (1, 2, 4), (0, 1)):
            if bm == 16 and tr:
                continue
            P(BLOCK_M=bm, BLOCK_N=bn, SPLIT_K=sk, TRANS=tr, XPERM=1, num_warps=4, num_stages=3)
    elif M <= 512:
        for bm, bn, sk, tr, nw in itertools.product((64, 128), (128, 256), (1, 2), (0, 1), (4, 8)):
            P(BLOCK_M=bm, BLOCK_N=bn, SPLIT_K=sk, TRANS=tr, XPERM=1, num_warps=nw, num_stages=3)
    else:
        for bn, tr, nw, st in itertools.product((128, 256), (0, 1), (4, 8), (3, 4)):
            P(BLOCK_M=128, BLOCK_N=bn, SPLIT_K=1, TRANS=tr, XPERM=1, num_warps=nw, num_stages=st)
    return out


def candidates_table(M: int, K: int, N: int):
    """The configs the sm90 table offers now for this M (the baseline to beat)."""
    from awq_compile.kernels.problem import Problem
    from awq_compile.kernels.registry import select
    from awq_compile.target import Target

    plan = select(Problem(K, N, 128, True, "float16"), Target.parse("cuda:sm90"))
    e = plan.entry_for(M)
    return [(e.kernel, e.config_dict)] if e.config else []


def candidates(M: int, quick: bool = False, which: str = "all", K: int = 0, N: int = 0):
    if which == "new":
        return candidates_table(M, K, N) + candidates_planes(M)
    out = []
    if M <= 4:
        for (bn, nw), bk, st, sk in itertools.product(((256, 2), (512, 4), (1024, 4), (512, 2), (1024, 8)),
                                                      (32, 64), (3,), (4, 8, 16, 32)):
            out.append(("triton_gemv", dict(BLOCK_M=1, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=nw,
                                            num_stages=st)))
    if 2 <= M <= 16:
        for bn, bk, sk, sa, nw in itertools.product((64, 128), (64, 128), (2, 4, 8, 16), (0, 1), (4,)):
            out.append(("triton_gemm", dict(BLOCK_M=16 if M <= 16 else (32 if M <= 32 else 64), BLOCK_N=bn,
                                            BLOCK_K=bk, SPLIT_K=sk, SCALE_AFTER=sa, num_warps=nw, num_stages=3)))
    if M == 64:
        for bm, bn, bk, sk, sa in itertools.product((32, 64), (64, 128), (64, 128), (1, 2, 4), (0, 1)):
            out.append(("triton_gemm", dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, SCALE_AFTER=sa,
                                            num_warps=4, num_stages=3)))
    if 128 <= M <= 512:
        for bm, bn, bk, sk, nw, st in itertools.product((64, 128), (128, 256), (64,), (1, 2), (4, 8), (3, 4)):
            out.append(("triton_gemm", dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=nw,
                                            num_stages=st)))
    if M >= 512:
        for bm, bn, bk, nw, st in itertools.product((128,), (128, 256), (64, 128), (4, 8), (3, 4)):
            out.append(("triton_gemm", dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=1, num_warps=nw,
                                            num_stages=st, GROUP_M=8)))
        for bn, bk in itertools.product((64, 128), (32, 128)):
            out.append(("triton_dequant_mm", dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=4)))
    seen, uniq = set(), []
    for kid, cfg in out:
        key = (kid, tuple(sorted(cfg.items())))
        if key not in seen:
            seen.add(key)
            uniq.append((kid, cfg))
    return uniq


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="1,16,64,256,1024,4096")
    ap.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in SHAPES))
    ap.add_argument("--json", default=None)
    ap.add_argument("--budget-s", type=float, default=480.0, help="stop sweeping after this long")
    ap.add_argument("--set", default="all", choices=("all", "new"),
                    help="'new': the table's current pick plus the plane GEMM / streaming GEMV kernels")
    args = ap.parse_args(argv)
    t_start = time.time()
    G = 128
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    ms = [int(m) for m in args.ms.split(",")]
    results = []
    best = {}
    sets = {}
    for K, N in shapes:
        R = copies_for(K * N // 2)
        srcs = [random_awq(K, N, G, seed=r) for r in range(R)]
        sets[(K, N)] = ([AWQ.to_standard(*s_) for s_ in srcs], dequant64(*srcs[0]))
        del srcs
    for mi, M in enumerate(ms):
        deadline = t_start + args.budget_s * (mi + 1) / len(ms)   # every M gets its share of the budget
        for K, N in shapes:
            stds, w64 = sets[(K, N)]
            R = len(stds)
            x = torch.randn(M, K, dtype=torch.float16, device="cuda")
            ref = x.double() @ w64
            outs = [torch.empty(M, N, dtype=torch.float16, device="cuda") for _ in range(R)]
            for kid, cfg in candidates(M, which=args.set, K=K, N=N):
                if time.time() > deadline:
                    print(f"budget for M={M} exhausted", flush=True)
                    break
                why = prune(kid, cfg, K=K, N=N, group_size=G, shared_limit=232448)
                if why:
                    continue
                try:
                    st = stds[0]
                    outs[0].fill_(float("nan"))
                    launch(kid, x, st.qweight, st.qzeros, st.scales, None, outs[0], G, cfg)
                    launch(kid, x, st.qweight, st.qzeros, st.scales, None, outs[0], G, cfg)
                    err = rel_err(outs[0], ref)
                    if not err < 2e-3:
                        print(f"WRONG {K}x{N} M={M} {kid} {cfg} err={err}", flush=True)
                        continue
                    calls = [(lambda st=st, o=o: launch(kid, x, st.qweight, st.qzeros, st.scales, None, o, G, cfg))
                             for st, o in zip(stds, outs)]
                    us = graph_time_us(calls, replays=10)
                except Exception as e:  # a config that does not compile or launch is reported, not fatal
                    print(f"FAIL {K}x{N} M={M} {kid} {cfg}: {type(e).__name__}: {str(e)[:200]}", flush=True)
                    continue
                results.append(dict(K=K, N=N, M=M, kernel=kid, cfg=cfg, us=us, err=err))
                b_ = best.get((K, N, M))
                if b_ is None or us < b_["us"]:
                    best[(K, N, M)] = results[-1]
            if (K, N, M) in best:
                b_ = best[(K, N, M)]
                print(f"BEST {K}x{N} M={M}: {b_['us']:.1f} us {b_['kernel']} {b_['cfg']}", flush=True)
            for kid in ("triton_gemv", "triton_gemv_stream", "triton_gemm", "triton_gemm_planes", "triton_dequant_mm"):
                rows = sorted([r for r in results if (r["K"], r["N"], r["M"], r["kernel"]) == (K, N, M, kid)],
                              key=lambda r: r["us"])[:4]
                for r in rows:
                    print(f"  top {K}x{N} M={M} {kid} {r['us']:.1f} us {r['cfg']}", flush=True)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(results, f, indent=0)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=0)
    print("\nshape        M     best_us  kernel               config")
    for (K, N, M), b in sorted(best.items()):
        print(f"{K}x{N:<6} {M:5d} {b['us']:9.1f}  {b['kernel']:20s} {b['cfg']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
