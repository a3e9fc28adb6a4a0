"""Device sweep of the decode-sized kernels (M = 1 .. 4) next to the shipped plan, cuBLAS and the same-bytes
ceiling, in one process.

``python -m benchmarks.gemv_sweep [--shapes ...] [--ms 1] [--dtypes float16,bfloat16] [--configs SET]
[--layout standard|kplanes|both] [--winners N] [--jobs 12] [--stress 20] [--json out.json]``

Same method as ``benchmarks.gemm`` (one CUDA graph over R weight copies >= 256 MB, median of replays / R).
Each shape's weights are converted once into every layout of ``--layout`` (``benchmarks.sweep.shape_weights``)
and each config runs on each of them (``layout=`` to ``launch.run``); a config the spec refuses for a
(layout, shape, M) is printed as REFUSED with the spec's reason and recorded, never timed.  Every config
(and the shipped plans' entries) is first compiled in ``--jobs`` worker processes (Triton's cache then serves
the timing process), then per (dtype, shape, M): ``ours`` (the op with today's plan, in its own layout),
``ours_std`` (the same op planned for the standard layout: the plan before the layout change), ``cublas``
(``x @ W`` on the dequantised weight), ``samebytes`` (cuBLAS on a dense weight of K/4 rows: as many bytes as
the int4 codes) and each config -- relative error against float64 on a NaN-poisoned output before it is
timed.  Every row says its layout.  The best config of each (row, layout), and every config that reduces
across programs (SPLIT_K > 1, the stripe kernel) within 5% of it, is relaunched ``--stress`` times on fresh
NaN poison (half with fresh x): a reduction race shows as a wrong launch.  ``--winners N``: every dtype after
the first times only the N fastest configs of the same (shape, M, layout) in the first.

Config spelling ``KERNEL:BNxBK:wWARPS[:skSPLIT][:mBLOCK_M][:fma][:rMAXNREG][:stSTAGES][:psPER_SM]`` with
KERNEL ``gemv`` (triton_gemv), ``stream`` (triton_gemv_stream) or ``stripe`` (triton_stripe: STAGES, PER_SM;
kplanes only, BLOCK_M >= 16); BLOCK_M is 1 unless ``:mN``.  ``rs:`` followed by ``benchmarks.wide_sweep``'s
two-number spelling (``rs:8x128:4:3:ps3``) is the register-operand GEMM ``triton_gemm_rs`` (the M 2..4 entries).
Sweep 1 (2026-12-01) also timed ``triton_gemv_deep`` (commit d4fb5cc..61db59f, removed after it lost everywhere;
see docs/performance.md and benchmarks/results/2026-12-01-h200-gemv-sweep1.log).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import sys

import torch

from .sweep import (add_layout_option, launch_resolved, layouts_of, plan_items, precompile, run_config,
                    shape_weights, stress, sweep_meta)

SHAPES = ((4096, 14336), (14336, 4096), (8192, 8192))
# the Llama-3-8B decode's projections the M = 1 entries were tuned for: merged qkv, o, merged gate/up, down
DECODE_SHAPES = ((4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096))
G = 128
KERNELS = {"gemv": "triton_gemv", "stream": "triton_gemv_stream", "stripe": "triton_stripe"}
_SHORT = {v: k for k, v in KERNELS.items()}


def _kp(M: int) -> tuple:
    """2026-12-02 (gemvkp, issue 11): the M 1..4 buckets on kplanes weights.  M = 1: the shipped entries, GEMV
    tiles of BLOCK_K 128 (a plane's 16 x rows are one contiguous run in kplanes; BLOCK_K 32 reads runs of 4)
    and 64, FMA_DECODE, split-K over the groups (8192: 64 groups, 14336: 112, 4096: 32).  M = 2..4: the
    shipped entries, the same BLOCK_K 128 GEMV, BLOCK_M 2 / 4 GEMV tiles (one weight read for every row) and
    the stripe kernel's 16-row tile (the M 5..16 entry; rows past M are masked)."""
    shipped1 = ("gemv:128x128:w1:sk112:fma", "stream:256x128:w4:sk16", "gemv:256x128:w2:sk32:fma",
                "gemv:256x32:w1:sk32:fma", "gemv:256x32:w2:sk32", "gemv:1024x32:w4:sk32:fma", "gemv:512x32:w4:sk32")
    if M == 1:
        grid = tuple(f"gemv:{bn}x128:w{w}:sk{sk}:fma" for bn in (128, 256, 512) for w in (1, 2, 4)
                     for sk in (16, 32, 64))
        return tuple(dict.fromkeys(shipped1 + grid + (
            "gemv:128x128:w1:sk56:fma", "gemv:256x128:w2:sk56:fma", "gemv:256x128:w2:sk112:fma",
            "gemv:256x64:w2:sk32:fma", "gemv:512x64:w4:sk32:fma", "gemv:256x64:w1:sk32:fma",
            "stream:256x128:w4:sk32", "stream:128x128:w2:sk32", "stream:512x128:w4:sk16")))
    return ("stream:256x128:w4:sk16", "gemv:256x32:w2:sk32", "gemv:1024x32:w4:sk32:fma", "gemv:512x32:w4:sk32",
            "gemv:256x128:w2:sk32:fma", "gemv:128x128:w1:sk112:fma", "gemv:512x128:w4:sk32:fma",
            "gemv:256x32:w2:sk32:m4", "gemv:256x64:w2:sk32:m4", "gemv:128x128:w2:sk32:m4", "gemv:256x128:w4:sk32:m4",
            "gemv:256x32:w2:sk32:m2", "gemv:256x128:w2:sk32:m2", "stream:256x128:w4:sk16:m4",
            "stripe:128x128:m16:w4:st3:ps2", "stripe:128x128:m16:w4:st4:ps2", "stripe:128x128:m16:w4:st3:ps3",
            "stripe:128x128:m16:w4:st3:ps1", "stripe:256x128:m16:w4:st3:ps2", "stripe:256x128:m16:w8:st3:ps2",
            "stripe:128x128:m16:w4:st2:ps4", "stripe:64x128:m16:w4:st3:ps2", "stripe:64x128:m16:w4:st4:ps4")


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
    # a set whose configs depend on M (a function of M)
    "kp": _kp,
    # nothing but the plans (ours, ours_std) and the cuBLAS columns
    "none": (),
}


def parse(spec: str) -> tuple[str, dict]:
    """(kernel id, table keys) of a config spelling."""
    parts = spec.split(":")
    if parts[0] == "rs":
        from .wide_sweep import parse as wide_parse

        return "triton_gemm_rs", wide_parse(spec[3:])
    if parts[0] not in KERNELS:
        raise ValueError(f"{spec!r}: kernel {parts[0]!r} is not one of {', '.join(KERNELS)}")
    kernel = KERNELS[parts[0]]
    bn, bk = (int(v) for v in parts[1].split("x"))
    cfg = dict(BLOCK_M=1, BLOCK_N=bn, BLOCK_K=bk, num_stages=1)
    for flag in parts[2:]:
        if flag.startswith("w"):
            cfg["num_warps"] = int(flag[1:])
        elif flag.startswith("sk"):
            cfg["SPLIT_K"] = int(flag[2:])
        elif flag.startswith("st"):
            cfg["STAGES"] = int(flag[2:])
        elif flag.startswith("ps"):
            cfg["PER_SM"] = int(flag[2:])
        elif flag.startswith("m"):
            cfg["BLOCK_M"] = int(flag[1:])
        elif flag == "fma":
            cfg["FMA_DECODE"] = 1
        elif flag.startswith("r"):
            cfg["maxnreg"] = int(flag[1:])
        else:
            raise ValueError(f"unknown flag {flag!r} in {spec!r}")
    return kernel, cfg


@functools.lru_cache(maxsize=None)
def resolve(spec: str):
    """(kernel id, typed config, launch options) of a spelling; a key the kernel's config does not have is
    an error here (the spec's own table check), not a silently ignored flag."""
    from awq_compile.kernels.specs import get_spec

    kernel, values = parse(spec)
    cfg, launch = get_spec(kernel).parse(values, spec, backend="cuda", table=False)
    return kernel, cfg, launch


def spec_of(kernel: str, config, launch) -> str | None:
    """The spelling of a plan entry's (kernel, config, launch options), or None where the spelling cannot say
    it (another kernel, a variant flag it has no letter for)."""
    if config is None or (kernel not in _SHORT and kernel != "triton_gemm_rs"):
        return None
    c = dict(config.items())
    opts = dict(launch.items()) if launch is not None else {}
    if kernel == "triton_gemm_rs":     # wide_sweep's two-number tile behind "rs:"
        bits = [f"rs:{c['BLOCK_M']}x{c['BLOCK_N']}", str(opts.get("num_warps", 4)), str(opts.get("num_stages", 3))]
        bits += [f"sk{c['SPLIT_K']}"] if c.get("SPLIT_K", 1) != 1 else []
        bits += [f"d{c['MMA_DEPTH']}"] if c.get("MMA_DEPTH", 1) != 1 else []
        bits += [f"ps{c['PER_SM']}"] if c.get("PER_SM", 0) else []
        bits += ["u"] if c.get("UNROLL", 0) else []
    else:
        bits = [_SHORT[kernel], f"{c['BLOCK_N']}x{c['BLOCK_K']}"]
        if "num_warps" in opts:
            bits.append(f"w{opts['num_warps']}")
        if c.get("SPLIT_K", 1) != 1:
            bits.append(f"sk{c['SPLIT_K']}")
        if c.get("BLOCK_M", 1) != 1:
            bits.append(f"m{c['BLOCK_M']}")
        if c.get("FMA_DECODE"):
            bits.append("fma")
        if "STAGES" in c:
            bits += [f"st{c['STAGES']}", f"ps{c['PER_SM']}"]
        if opts.get("maxnreg"):
            bits.append(f"r{opts['maxnreg']}")
    spell = ":".join(bits)
    try:
        return spell if resolve(spell) == (kernel, config, launch) else None
    except ValueError:
        return None


def specs_for(which: str, M: int) -> list[str]:
    out = []
    for name in which.split("+"):
        s = SETS.get(name, (name,))
        out += list(s(M) if callable(s) else s)
    return list(dict.fromkeys(out))


def _reduces(spec: str) -> bool:
    """Programs of the config share output tiles (split-K atomics, the stripe's slots): worth a stress."""
    kernel, cfg, _ = resolve(spec)
    return kernel == "triton_stripe" or getattr(cfg, "SPLIT_K", 1) > 1


def _run_cfg(spec: str, x, w, out, target):
    return launch_resolved(resolve(spec), x, w, out, G, target)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in SHAPES),
                    help="KxN list; 'decode' adds the Llama decode shapes, 'goal' the three goal shapes")
    ap.add_argument("--ms", default="1")
    ap.add_argument("--dtypes", default="float16,bfloat16")
    ap.add_argument("--configs", default="shipped", help="set names or specs joined by '+'")
    add_layout_option(ap)
    ap.add_argument("--winners", type=int, default=0,
                    help="dtypes after the first time only the N fastest configs of the first (0: all)")
    ap.add_argument("--jobs", type=int, default=12)
    ap.add_argument("--tol", type=float, default=1e-3, help="fp16; bf16 outputs get 10x (their rounding is 4e-3)")
    ap.add_argument("--stress", type=int, default=20)
    ap.add_argument("--json", default=None)
    return ap


def shapes_of(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        if part in ("goal", "decode"):
            out += list(SHAPES if part == "goal" else DECODE_SHAPES)
        else:
            K, N = (int(v) for v in part.split("x"))
            out.append((K, N))
    return list(dict.fromkeys(out))


def main(argv=None):
    args = parser().parse_args(argv)

    import awq_compile.runtime.op  # noqa: F401
    from awq_compile.kernels.problem import Problem
    from awq_compile.kernels.registry import select
    from awq_compile.target import detect

    from .common import copy_bandwidth_gbs, graph_time_us, rel_err
    from .sweep import compile_ms

    ms = [int(m) for m in args.ms.split(",")]
    dtypes = args.dtypes.split(",")
    layouts = layouts_of(args.layout)
    shapes = shapes_of(args.shapes)
    for M in ms:                                 # every spelling parses before anything runs
        for spec in specs_for(args.configs, M):
            resolve(spec)
    cm = compile_ms(ms)
    target = detect(torch.device("cuda"))
    meta = sweep_meta(target, copy_gbs=round(copy_bandwidth_gbs(), 1), layouts=list(layouts), configs=args.configs,
                      winners=args.winners)
    print(f"# {meta}", flush=True)
    rows: list = []
    ranked: dict = {}            # (K, N, M, layout) -> the first dtype's timed configs, fastest first

    def specs_at(K, N, M, lay, first=True):
        if first or not args.winners:
            return specs_for(args.configs, M)
        return ranked.get((K, N, M, lay), [])[:args.winners]

    def dump():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(meta=meta, rows=rows), f, indent=1)

    for di, dname in enumerate(dtypes):
        dtype = getattr(torch, dname)
        tol = args.tol * (10 if dname == "bfloat16" else 1)
        plans = {}
        for K, N in shapes:
            p = Problem(K, N, G, True, dname)
            plans[(K, N)] = (select(p, target), select(p, target, layout="standard"))
        items, refused = plan_items(resolve, lambda K, N, M, lay: specs_at(K, N, M, lay, di == 0), shapes=shapes,
                                    ms=ms, dtype=dname, layouts=layouts, G=G, target=target)
        for (K, N), pl in plans.items():          # the plans' own entries too (ours, ours_std)
            for plan in pl:
                for M in ms:
                    e = plan.entry_for(M)
                    sp = spec_of(e.kernel, e.config, e.launch)
                    if sp:
                        items.append((sp, dname, plan.layout, cm[M]))
        t0 = datetime.datetime.now()
        failed = precompile(_run_cfg, items, args.jobs, K=2048, N=1024, G=G)
        print(f"# {dname}: compiled {len(set(items))} (config, layout, M class) items in "
              f"{(datetime.datetime.now() - t0).total_seconds():.0f} s; {len(refused)} (config, layout, shape, M) "
              "refused by the spec (listed per row)", flush=True)
        for K, N in shapes:
            W = shape_weights(K, N, G, dtype, layouts)
            R = len(W.srcs)
            same = [torch.randn(K // 4, N, dtype=dtype, device="cuda") for _ in range(R)]
            plan, plan_std = plans[(K, N)]
            enc, enc_std = plan.encode(), plan_std.encode()
            op = torch.ops.awq_compile.w4a16_linear
            for M in ms:
                x = torch.randn(M, K, dtype=dtype, device="cuda")
                ref = x.double() @ W.w64
                base = dict(K=K, N=N, M=M, dtype=dname)
                cols = {}
                for name, pl, text in (("ours", plan, enc), ("ours_std", plan_std, enc_std)):
                    e = pl.entry_for(M)
                    calls = [(lambda s=s, t=text: op(x, s[0], s[1], s[2], None, [], "bench", "awq", G, t, ""))
                             for s in W.srcs]
                    cols[name] = graph_time_us(calls)
                    rows.append(dict(base, cfg=name, layout=pl.layout, us=cols[name], err=rel_err(calls[0](), ref),
                                     kernel=e.kernel, config=e.config_dict, spec=spec_of(e.kernel, e.config, e.launch)))
                ours, ours_std = cols["ours"], cols["ours_std"]
                cub = graph_time_us([(lambda w=w: x @ w) for w in W.dense])
                xs = x[:, : K // 4].contiguous()
                sb = graph_time_us([(lambda w=w: xs @ w) for w in same])
                rows.append(dict(base, cfg="cublas", layout="dense", us=cub))
                rows.append(dict(base, cfg="samebytes", layout="dense", us=sb))
                e, e_std = plan.entry_for(M), plan_std.entry_for(M)
                print(f"  {dname} {K}x{N} M={M:3d} ours {ours:7.2f} [{plan.layout}] ({e.label()})  ours_std "
                      f"{ours_std:7.2f} ({e_std.label()})  cublas {cub:7.2f}  samebytes {sb:7.2f}", flush=True)
                for lay in layouts:
                    timed = []
                    for spec in specs_at(K, N, M, lay, di == 0):
                        row = dict(base, cfg=spec, layout=lay)
                        rows.append(row)
                        label = f"{lay:8s} {spec:34s}"
                        us = run_config(_run_cfg, spec, x, W.packed[lay], ref, M, N, dtype, tol, target, row, label,
                                        refused=refused.get((spec, lay, K, N, M)),
                                        failed=failed.get((spec, dname, lay, cm[M])))
                        if us is None:
                            continue
                        timed.append(row)
                        print(f"    {label} {us:7.2f} us  ({us / ours:4.2f}x ours, {us / ours_std:4.2f}x ours_std, "
                              f"{us / sb:4.2f}x same-bytes)  err {row['err']:.1e}", flush=True)
                    if di == 0:
                        ranked[(K, N, M, lay)] = [r["cfg"] for r in sorted(timed, key=lambda r: r["us"])]
                    if timed and args.stress:
                        best = min(r["us"] for r in timed)
                        for row in timed:
                            if row["us"] == best or (_reduces(row["cfg"]) and row["us"] <= 1.05 * best):
                                row["stress"] = st = stress(_run_cfg, row["cfg"], x, W.packed[lay][0], W.w64, M, K,
                                                            N, dtype, target, args.stress, tol)
                                print(f"  stress {lay} {row['cfg']}: {st['launches']} launches, {st['wrong']} wrong, "
                                      f"max err {st['max_err']:.2e}", flush=True)
            del W, same
            torch.cuda.empty_cache()
            dump()
    dump()
    print("\nbest per row (µs): dtype shape M | ours ours_std cublas samebytes | per layout: best config, x ours_std")
    keyed: dict = {}
    for r in rows:
        keyed.setdefault((r["dtype"], r["K"], r["N"], r["M"]), []).append(r)
    for (dn, K, N, M), rs in keyed.items():
        get = lambda name: next(r["us"] for r in rs if r["cfg"] == name)   # noqa: E731
        o, os_, c, s = get("ours"), get("ours_std"), get("cublas"), get("samebytes")
        line = f"{dn:8s} {K}x{N:<6} M={M:3d} | {o:7.2f} {os_:7.2f} {c:7.2f} {s:7.2f} |"
        for lay in layouts:
            w = [r for r in rs if r["layout"] == lay and r["cfg"] not in COLUMNS and r.get("us")]
            b = min(w, key=lambda r: r["us"]) if w else None
            st = b.get("stress") if b else None
            line += (f" {lay}: {b['us']:7.2f} {b['us'] / os_:4.2f}x {b['cfg']}"
                     + (f" stress {st['wrong']}/{st['launches']} wrong" if st else "") if b else f" {lay}: -")
        print(line)
    return 0


COLUMNS = ("ours", "ours_std", "cublas", "samebytes")


if __name__ == "__main__":
    sys.exit(main())
