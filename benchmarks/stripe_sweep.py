"""Device sweep of the stripe kernel (``kernels/triton/stripe.py``): every config checked, then timed.

``python -m benchmarks.stripe_sweep [--shapes ...] [--ms 1,16,64] [--set small|large|all] [--json out.json]``

Same method as ``benchmarks.gemm`` (one CUDA graph over R weight copies >= 256 MB, median of replays / R),
on the standard layout (and the kplanes layout for KPERM configs).  Each (shape, M, config): relative
error against float64 (fresh x; NaN-poisoned output) before it is timed; a config whose error exceeds
``--tol`` is reported and not timed.  The best config per (shape, M) is then launched ``--stress``
times more on fresh poison, each result checked again (stripes that meet inside a tile reduce through
the workspace; a race shows up as a moving error or an unwritten element).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys

import torch

from awq_compile.formats.kplanes import to_kpairs, to_kplanes
from awq_compile.kernels.triton.stripe import StripeConfig, check_config, stripe_grid, stripe_linear

from .common import AWQ, copies_for, graph_time_us, random_awq, rel_err

G = 128
SHAPES = ((4096, 14336), (14336, 4096), (8192, 8192))


def configs_for(M: int, which: str):
    C = StripeConfig
    out = []
    if which in ("small", "all") and M <= 64:
        bm = 16 if M <= 16 else (32 if M <= 32 else 64)
        if M == 1:
            for kp in (False, True):
                for st, ps in ((3, 2), (6, 2), (4, 4)):
                    out.append(C(BLOCK_M=1, BLOCK_N=128, BLOCK_K=128, DOT=False, STAGES=st, PER_SM=ps, KPERM=kp))
                out.append(C(BLOCK_M=1, BLOCK_N=256, BLOCK_K=128, DOT=False, STAGES=4, PER_SM=2, KPERM=kp,
                             num_warps=8))
        if M == 1:
            out += [C(BLOCK_M=16, BLOCK_N=128, STAGES=st, PER_SM=2) for st in (3, 5)]
        else:
            for kp in (False, True):
                for bn in ((128, 256) if bm <= 16 else (128,)):
                    for st in (3, 5):
                        for ps in (1, 2):
                            out.append(C(BLOCK_M=bm, BLOCK_N=bn, STAGES=st, PER_SM=ps, KPERM=kp))
    if which in ("large", "all") and M >= 64:
        for bm, bn, w in ((64, 128, 4), (128, 128, 8), (64, 256, 8), (128, 256, 8)):
            for st in (3, 4):
                out.append(C(BLOCK_M=bm, BLOCK_N=bn, STAGES=st, PER_SM=1, KPERM=True, num_warps=w))
    return out


def configs_v2(M: int):
    """Sweep 2: the mma.sync orientation (TRANS off), one wide dot per K tile (WIDE), scale-in, FMA with
    per-thread partials; plus run 1's winners for reference."""
    C = StripeConfig
    out = []
    if M == 1:
        for bn, st, ps, w in ((128, 4, 4, 4), (128, 6, 4, 4), (64, 4, 8, 4), (256, 4, 2, 8), (128, 4, 3, 4)):
            for kp in (False, True):
                out.append(C(BLOCK_M=1, BLOCK_N=bn, DOT=False, STAGES=st, PER_SM=ps, KPERM=kp, num_warps=w))
    if M <= 32:
        bm = 16 if M <= 16 else 32
        out.append(C(BLOCK_M=bm, BLOCK_N=128, STAGES=3, PER_SM=2, KPERM=True))           # run 1's best
        for bn, st, ps, w in ((128, 3, 2, 4), (128, 4, 3, 4), (256, 3, 2, 4), (256, 4, 2, 8), (64, 4, 4, 4)):
            for si in (False, True):
                out.append(C(BLOCK_M=bm, BLOCK_N=bn, STAGES=st, PER_SM=ps, KPERM=True, TRANS=False, SCALE_IN=si,
                             num_warps=w))
        for bn, st, ps, w in ((128, 3, 2, 4), (128, 4, 3, 4), (256, 3, 2, 8)):
            for si in (False, True):
                out.append(C(BLOCK_M=bm, BLOCK_N=bn, STAGES=st, PER_SM=ps, WIDE=True, SCALE_IN=si, num_warps=w))
    elif M <= 64:
        out.append(C(BLOCK_M=64, BLOCK_N=128, STAGES=3, PER_SM=2, KPERM=True))
        for bn, st, ps, w in ((128, 3, 2, 4), (128, 4, 1, 4), (256, 3, 1, 8), (128, 3, 2, 8)):
            out.append(C(BLOCK_M=64, BLOCK_N=bn, STAGES=st, PER_SM=ps, WIDE=True, SCALE_IN=True, num_warps=w))
            out.append(C(BLOCK_M=64, BLOCK_N=bn, STAGES=st, PER_SM=ps, KPERM=True, TRANS=False, SCALE_IN=True,
                         num_warps=w))
        out.append(C(BLOCK_M=32, BLOCK_N=128, STAGES=4, PER_SM=3, KPERM=True, TRANS=False, SCALE_IN=True))
    else:
        out.append(C(BLOCK_M=64, BLOCK_N=256, STAGES=4, PER_SM=1, KPERM=True, num_warps=8))   # run 1's best
        for bm, bn, st, w in ((128, 128, 3, 8), (128, 128, 4, 8), (64, 256, 3, 8), (128, 256, 3, 8),
                              (64, 128, 4, 4)):
            out.append(C(BLOCK_M=bm, BLOCK_N=bn, STAGES=st, PER_SM=1, WIDE=True, SCALE_IN=True, num_warps=w))
        for bm, bn, st, w in ((128, 128, 3, 8), (128, 256, 3, 8), (256, 128, 3, 8)):
            out.append(C(BLOCK_M=bm, BLOCK_N=bn, STAGES=st, PER_SM=1, KPERM=True, TRANS=False, SCALE_IN=True,
                         num_warps=w))
    return out


def configs_v3(M: int):
    """Sweep 3: the kpairs decode (two nibbles per LOP3, one paired subtract) on mma.sync (TRANS off) and on
    register-A wgmma (TRANS), against sweep 2's winners."""
    C = StripeConfig
    out = []
    if M <= 64:
        bm = 16 if M <= 16 else (32 if M <= 32 else 64)
        out.append(C(BLOCK_M=bm, BLOCK_N=128, STAGES=3, PER_SM=2, KPERM=True))           # sweep 1/2 best (M>1)
        if M == 1:
            out.append(C(BLOCK_M=16, BLOCK_N=256, STAGES=3, PER_SM=2, KPERM=True, TRANS=False))   # sweep 2 best
        for bn, st, ps, w in ((128, 3, 2, 4), (128, 4, 3, 4), (256, 3, 2, 4), (256, 4, 2, 4), (128, 6, 2, 4),
                              (256, 3, 2, 8), (128, 3, 4, 4)):
            for tr in (False, True):
                if bm == 64 and tr is False and w == 4 and bn == 256:
                    continue
                out.append(C(BLOCK_M=bm, BLOCK_N=bn, STAGES=st, PER_SM=ps, PAIRS=True, TRANS=tr, num_warps=w))
        out.append(C(BLOCK_M=bm, BLOCK_N=128, STAGES=3, PER_SM=2, PAIRS=True, TRANS=False, SCALE_IN=True))
        out.append(C(BLOCK_M=bm, BLOCK_N=256, STAGES=3, PER_SM=2, PAIRS=True, TRANS=True, SCALE_IN=True))
    else:
        out.append(C(BLOCK_M=128, BLOCK_N=256, STAGES=3, PER_SM=1, KPERM=True, TRANS=False, SCALE_IN=True,
                     num_warps=8))                                                    # sweep 2 best
        for bm, bn, st, w, tr in ((128, 128, 3, 8, True), (64, 256, 3, 8, True), (128, 256, 3, 8, True),
                                  (64, 128, 4, 4, True), (128, 256, 3, 8, False), (128, 128, 4, 8, False),
                                  (256, 128, 3, 8, False)):
            out.append(C(BLOCK_M=bm, BLOCK_N=bn, STAGES=st, PER_SM=1, PAIRS=True, TRANS=tr, SCALE_IN=True,
                         num_warps=w))
    return out


def configs_v4(M: int):
    """Sweep 4: per-contributor slot reduction (SLOTS, plain stores) against fp32 atomics, on sweep 3's
    winners, and more programs per SM now that a split tile costs no atomics."""
    C = StripeConfig
    out = []
    if M == 1:
        for ps in (2, 3, 4):
            out.append(C(BLOCK_M=16, BLOCK_N=256, STAGES=3, PER_SM=ps, PAIRS=True))
        out.append(C(BLOCK_M=16, BLOCK_N=256, STAGES=3, PER_SM=2, PAIRS=True, SLOTS=False))
        out.append(C(BLOCK_M=16, BLOCK_N=256, STAGES=4, PER_SM=2, PAIRS=True))
        out.append(C(BLOCK_M=16, BLOCK_N=128, STAGES=3, PER_SM=3, PAIRS=True))
        out.append(C(BLOCK_M=16, BLOCK_N=256, STAGES=3, PER_SM=2, KPERM=True, TRANS=False))
        out.append(C(BLOCK_M=1, BLOCK_N=128, DOT=False, STAGES=4, PER_SM=4, KPERM=True))
        out.append(C(BLOCK_M=1, BLOCK_N=128, DOT=False, STAGES=4, PER_SM=4, KPERM=True, SLOTS=False))
    elif M <= 32:
        bm = 16 if M <= 16 else 32
        out.append(C(BLOCK_M=bm, BLOCK_N=128, STAGES=3, PER_SM=2, KPERM=True))
        out.append(C(BLOCK_M=bm, BLOCK_N=128, STAGES=3, PER_SM=2, KPERM=True, SLOTS=False))
        out.append(C(BLOCK_M=bm, BLOCK_N=128, STAGES=3, PER_SM=3, KPERM=True))
        for bn, ps in ((128, 2), (256, 2), (128, 3), (256, 3)):
            out.append(C(BLOCK_M=bm, BLOCK_N=bn, STAGES=3, PER_SM=ps, PAIRS=True))
        out.append(C(BLOCK_M=bm, BLOCK_N=128, STAGES=3, PER_SM=2, KPERM=True, TRANS=False))
    elif M <= 64:
        out.append(C(BLOCK_M=64, BLOCK_N=128, STAGES=3, PER_SM=2, PAIRS=True))
        out.append(C(BLOCK_M=64, BLOCK_N=128, STAGES=3, PER_SM=2, PAIRS=True, SLOTS=False))
        out.append(C(BLOCK_M=64, BLOCK_N=128, STAGES=3, PER_SM=2, KPERM=True))
        out.append(C(BLOCK_M=32, BLOCK_N=128, STAGES=3, PER_SM=2, PAIRS=True))
    else:
        out.append(C(BLOCK_M=64, BLOCK_N=256, STAGES=3, PER_SM=1, PAIRS=True, SCALE_IN=True, num_warps=8))
        out.append(C(BLOCK_M=128, BLOCK_N=256, STAGES=3, PER_SM=1, PAIRS=True, SCALE_IN=True, num_warps=8))
    return out


def configs_v5(M: int):
    """Sweep 5: slot reduction with the padding rows of a small-M tile masked out (M = 1 paid for 16 rows in
    sweep 4), and the candidates for the sm90 table entries."""
    C = StripeConfig
    if M == 1:
        return [C(BLOCK_M=16, BLOCK_N=256, STAGES=3, PER_SM=2, PAIRS=True),
                C(BLOCK_M=16, BLOCK_N=256, STAGES=3, PER_SM=2, PAIRS=True, SLOTS=False),
                C(BLOCK_M=16, BLOCK_N=256, STAGES=3, PER_SM=2, PAIRS=True, SCALE_IN=True),
                C(BLOCK_M=16, BLOCK_N=256, STAGES=3, PER_SM=2, KPERM=True, TRANS=False)]
    if M <= 32:
        bm = 16 if M <= 16 else 32
        return [C(BLOCK_M=bm, BLOCK_N=256, STAGES=3, PER_SM=2, PAIRS=True),
                C(BLOCK_M=bm, BLOCK_N=128, STAGES=3, PER_SM=2, KPERM=True),
                C(BLOCK_M=bm, BLOCK_N=128, STAGES=3, PER_SM=2, PAIRS=True),
                C(BLOCK_M=bm, BLOCK_N=256, STAGES=3, PER_SM=2, PAIRS=True, SCALE_IN=True)]
    return [C(BLOCK_M=64, BLOCK_N=128, STAGES=3, PER_SM=2, KPERM=True),
            C(BLOCK_M=64, BLOCK_N=128, STAGES=3, PER_SM=2, PAIRS=True),
            C(BLOCK_M=64, BLOCK_N=128, STAGES=4, PER_SM=2, KPERM=True)]


def short(c: StripeConfig) -> str:
    body = "dot" if c.DOT else "fma"
    return (f"{body} m{c.BLOCK_M} n{c.BLOCK_N} k{c.BLOCK_K} st{c.STAGES} x{c.PER_SM}/SM w{c.num_warps}"
            + (" kperm" if c.KPERM else "") + ("" if c.TRANS or not c.DOT else " nt")
            + (" wide" if c.WIDE else "") + (" pairs" if c.PAIRS else "") + (" in" if c.SCALE_IN else "")
            + ("" if c.SLOTS else " atomic"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in SHAPES))
    ap.add_argument("--ms", default="1,16,64")
    ap.add_argument("--set", default="v3", choices=("small", "large", "all", "v2", "v3", "v4", "v5"))
    ap.add_argument("--dtypes", default="float16")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--stress", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    dev = torch.cuda.get_device_properties(0)
    sms = dev.multi_processor_count
    import triton
    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
                device=dev.name, sms=sms,
                torch=torch.__version__, triton=triton.__version__)
    print(f"# {meta}", flush=True)
    rows = []
    for dname in args.dtypes.split(","):
        dtype = getattr(torch, dname)
        for spec in args.shapes.split(","):
            K, N = (int(v) for v in spec.split("x"))
            R = copies_for(K * N // 2)
            std = [AWQ.to_standard(*random_awq(K, N, G, dtype=dtype, seed=r)) for r in range(R)]
            kp = [to_kplanes(w.qweight) for w in std]
            kq = [to_kpairs(w.qweight) for w in std]
            w64 = std[0]
            from awq_compile.formats.standard import dequantize_standard
            w64 = dequantize_standard(std[0].qweight, std[0].qzeros, std[0].scales.double(), G, torch.float64)
            for M in (int(m) for m in args.ms.split(",")):
                x = torch.randn(M, K, dtype=dtype, device="cuda")
                ref = x.double() @ w64
                best = None
                sets = dict(v2=configs_v2, v3=configs_v3, v4=configs_v4, v5=configs_v5)
                for cfg in (sets[args.set](M) if args.set in sets else configs_for(M, args.set)):
                    why = check_config(cfg, K=K, N=N, group_size=G)
                    if why:
                        continue
                    qs = kp if cfg.KPERM else (kq if cfg.PAIRS else [w.qweight for w in std])
                    out = torch.full((M, N), float("nan"), dtype=dtype, device="cuda")
                    row = dict(K=K, N=N, M=M, dtype=dname, cfg=short(cfg), config=cfg.__dict__,
                               grid=stripe_grid(cfg, M, N, K, sms))
                    try:
                        stripe_linear(x, qs[0], std[0].qzeros, std[0].scales, None, G, cfg, out)
                        torch.cuda.synchronize()
                        err = rel_err(out, ref)
                        row["err"] = err
                        if not (err < args.tol):
                            row["us"] = None
                            print(f"  {K}x{N} M={M:5d} {short(cfg):45s} WRONG err={err:.2e}", flush=True)
                            rows.append(row)
                            continue
                        calls = [(lambda q=q, w=w: stripe_linear(x, q, w.qzeros, w.scales, None, G, cfg))
                                 for q, w in zip(qs, std)]
                        us = graph_time_us(calls)
                    except Exception as e:
                        print(f"  {K}x{N} M={M:5d} {short(cfg):45s} FAILED {type(e).__name__}: {str(e)[:300]}",
                              flush=True)
                        row["us"] = None
                        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                        rows.append(row)
                        continue
                    row["us"] = us
                    row["gbs"] = (K * N // 2 + (K // G) * N * 2.5) / (us * 1e-6) / 1e9
                    rows.append(row)
                    print(f"  {K}x{N} M={M:5d} {short(cfg):45s} {us:8.2f} us  err {err:.1e}  grid {row['grid']}",
                          flush=True)
                    if best is None or us < best[0]:
                        best = (us, cfg, row)
                if best is not None and args.stress:
                    us, cfg, row = best
                    qs = kp if cfg.KPERM else (kq if cfg.PAIRS else [w.qweight for w in std])
                    errs, bad = [], 0
                    out = torch.empty((M, N), dtype=dtype, device="cuda")
                    for i in range(args.stress):
                        xs = torch.randn(M, K, dtype=dtype, device="cuda") if i % 2 else x
                        r_ = ref if xs is x else xs.double() @ w64
                        out.fill_(float("nan"))
                        stripe_linear(xs, qs[0], std[0].qzeros, std[0].scales, None, G, cfg, out)
                        e = rel_err(out, r_)
                        errs.append(e)
                        bad += not (e < args.tol)
                    row["stress"] = dict(launches=args.stress, wrong=bad, max_err=max(errs))
                    print(f"  best {K}x{N} M={M}: {short(cfg)} {us:.2f} us; stress {args.stress} launches, "
                          f"{bad} wrong, max err {max(errs):.2e}", flush=True)
            del std, kp, kq
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
    print("\nbest per row (µs):")
    seen = {}
    for r in rows:
        if r.get("us") is None:
            continue
        key = (r["dtype"], r["K"], r["N"], r["M"])
        if key not in seen or r["us"] < seen[key]["us"]:
            seen[key] = r
    for key, r in seen.items():
        st = r.get("stress", {})
        print(f"{key[0]:8s} {key[1]}x{key[2]:<6} M={key[3]:5d} {r['us']:8.2f}  {r['cfg']}  "
              f"err {r['err']:.1e} stress-wrong {st.get('wrong', '-')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
