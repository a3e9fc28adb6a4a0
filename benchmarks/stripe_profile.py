"""Run the best stripe configs of a sweep once each, for ``ncu`` to profile.

``ncu --clock-control none -k regex:_stripe_kernel --section SpeedOfLight --section WarpStateStats ...
python -m benchmarks.stripe_profile --sweep sweep.json [--shape 4096x14336] [--ms 1,16,64,256]``

Each chosen config is launched twice on weights in the layout it reads (the first launch compiles and
warms; profile the second: ``--launch-skip`` is not needed when ncu's kernel filter is used with
``-c``, the report lists both).
"""

from __future__ import annotations

import argparse
import json

import torch

from awq_compile.formats.kplanes import to_kpairs, to_kplanes
from awq_compile.kernels.triton.stripe import StripeConfig, stripe_linear

from .common import AWQ, random_awq

G = 128


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", required=True)
    ap.add_argument("--shape", default="4096x14336")
    ap.add_argument("--ms", default="1,16,64,256")
    args = ap.parse_args(argv)
    K, N = (int(v) for v in args.shape.split("x"))
    rows = json.load(open(args.sweep))["rows"]
    w = AWQ.to_standard(*random_awq(K, N, G, seed=0))
    kp = to_kplanes(w.qweight)
    kq = to_kpairs(w.qweight)
    for M in (int(m) for m in args.ms.split(",")):
        cands = [r for r in rows if r["K"] == K and r["N"] == N and r["M"] == M and r.get("us")
                 and r["dtype"] == "float16"]
        if not cands:
            continue
        best = min(cands, key=lambda r: r["us"])
        cfg = StripeConfig(**best["config"])
        x = torch.randn(M, K, dtype=torch.float16, device="cuda")
        q = kp if cfg.KPERM else (kq if cfg.PAIRS else w.qweight)
        for _ in range(2):
            stripe_linear(x, q, w.qzeros, w.scales, None, G, cfg)
        torch.cuda.synchronize()
        print(f"M={M}: {best['cfg']} ({best['us']:.2f} us in the sweep)", flush=True)


if __name__ == "__main__":
    main()
