"""Launch ``triton_gemm_wide`` configs once each (after a warm-up launch) for ncu.

``ncu --clock-control none --section SpeedOfLight --section WarpStateStats ... -k regex:_gemm_wide
python -m benchmarks.wide_profile --shape 4096x14336 --ms 256,4096 --configs 256x128x64:8:3:t,...``
"""

from __future__ import annotations

import argparse

import torch

from .wide_sweep import G, _run_cfg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shape", default="4096x14336")
    ap.add_argument("--ms", default="256,4096")
    ap.add_argument("--configs", default="256x128x64:8:3:t")
    ap.add_argument("--dtype", default="float16")
    args = ap.parse_args(argv)
    from awq_compile.target import detect

    from .common import AWQ, random_awq

    K, N = (int(v) for v in args.shape.split("x"))
    dtype = getattr(torch, args.dtype)
    std = AWQ.to_standard(*random_awq(K, N, G, dtype=dtype))
    target = detect(torch.device("cuda"))
    for M in (int(m) for m in args.ms.split(",")):
        x = torch.randn(M, K, dtype=dtype, device="cuda")
        out = torch.empty(M, N, dtype=dtype, device="cuda")
        for spec in args.configs.split(","):
            _run_cfg(spec, x, std, out, target)          # warm-up (compile), skipped by ncu's --launch-skip
            torch.cuda.synchronize()
            _run_cfg(spec, x, std, out, target)
            torch.cuda.synchronize()
            print(f"launched {spec} M={M}", flush=True)


if __name__ == "__main__":
    main()
