"""Split-K / Stream-K stress check on the GPU (``python -m benchmarks.splitk_stress [--configs SPEC,...]
[--ms ...] [--launches 20]``): every reducing entry of the shipped sm90 plans (SPLIT_K > 1 or STREAM_K)
at the listed M, plus any ``triton_gemm_wide`` configs given (``wide_sweep`` spelling, e.g.
``256x128x64:8:3:t:p1:st1``), each relaunched on NaN-poisoned outputs (every other launch with fresh x);
all must match float64.  A race in a reduction shows up as an error that moves between launches on the
same inputs; Stream-K sums its partials in a fixed order, so its relaunches on the same x must also be
bitwise identical."""
import argparse

import torch

import awq_compile.runtime.op  # noqa: F401
from awq_compile.kernels.problem import Problem
from awq_compile.kernels.registry import select
from awq_compile.kernels.specs import get_spec
from awq_compile.kernels.triton.launch import run
from awq_compile.target import detect
from benchmarks.common import AWQ, dequant64, random_awq, rel_err

from benchmarks.wide_sweep import parse

SHAPES = ((4096, 14336), (14336, 4096), (8192, 8192), (4096, 1024))
MS = "1,3,5,16,24,33,64,100,128,200,256,384,512,1024"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="", help="extra triton_gemm_wide configs to stress at every M")
    ap.add_argument("--ms", default=MS)
    ap.add_argument("--launches", type=int, default=20)
    args = ap.parse_args(argv)
    target = detect(torch.device("cuda"))
    wide = get_spec("triton_gemm_wide")
    extra = [(spec, *wide.parse(parse(spec), spec, backend="cuda", table=False))
             for spec in args.configs.split(",") if spec]
    bad = runs = 0
    for K, N in SHAPES:
        q, z, s = random_awq(K, N, 128)
        st = AWQ.to_standard(q, z, s)
        w = dequant64(q, z, s)
        plan = select(Problem(K, N, 128, True, "float16"), target)
        for M in (int(m) for m in args.ms.split(",")):
            e = plan.entry_for(M)
            cases = []
            if e.config is not None and (e.config_dict.get("SPLIT_K", 1) > 1 or e.config_dict.get("STREAM_K", 0)):
                cases.append((f"shipped {e.kernel} {e.config.label()}", e.kernel, e.config, e.launch))
            cases += [(spec, "triton_gemm_wide", cfg, launch) for spec, cfg, launch in extra]
            if not cases:
                continue
            x0 = torch.randn(M, K, dtype=torch.float16, device="cuda")
            ref0 = x0.double() @ w
            out = torch.empty(M, N, dtype=torch.float16, device="cuda")
            for name, kernel, cfg, launch in cases:
                stream_k = bool(getattr(cfg, "STREAM_K", 0))
                errs, first, moved, wrong = [], None, 0, 0
                for i in range(args.launches):
                    x, ref = (x0, ref0) if i % 2 == 0 else (None, None)
                    if x is None:
                        x = torch.randn(M, K, dtype=torch.float16, device="cuda")
                        ref = x.double() @ w
                    out.fill_(float("nan"))
                    run(kernel, cfg, launch, x, st.qweight, st.qzeros, st.scales, None, out, 128, target,
                        interpret=False)
                    errs.append(rel_err(out, ref))
                    differs = False
                    if x is x0:
                        if first is None:
                            first = out.clone()
                        elif stream_k and not torch.equal(out, first):
                            differs = True
                            moved += 1
                    wrong += (not errs[-1] < 2e-3) or differs
                    runs += 1
                bad += wrong
                print(f"{'BAD ' if wrong else ''}{K}x{N} M={M} {name}: {args.launches} launches, max err "
                      f"{max(errs):.2e}" + (f", {moved} not bitwise equal to the first" if stream_k else ""),
                      flush=True)
    print(f"split-K / Stream-K stress done: {runs} launches, bad: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
