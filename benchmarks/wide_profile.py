"""Launch ``triton_gemm_wide`` / ``triton_gemm_rs`` configs once each (after a warm-up launch) for ncu.

``ncu --clock-control none --section SpeedOfLight --section WarpStateStats ... -k regex:_gemm_wide
python -m benchmarks.wide_profile --shape 4096x14336 --ms 256,4096 --configs 256x128x64:8:3:t,...``
(``wide_sweep``'s spellings; a register-operand spec ``BMxBN:...`` runs on kplanes weights, converted through
``awq_compile.formats.convert``: profile it with ``-k regex:_gemm_rs``).
"""

from __future__ import annotations

import argparse

import torch

from .wide_sweep import G, _run_cfg, resolve


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
    kplanes = None
    target = detect(torch.device("cuda"))
    for M in (int(m) for m in args.ms.split(",")):
        x = torch.randn(M, K, dtype=dtype, device="cuda")
        out = torch.empty(M, N, dtype=dtype, device="cuda")
        for spec in args.configs.split(","):
            w = std
            if resolve(spec)[0] == "triton_gemm_rs":    # the register-operand GEMM reads kplanes
                if kplanes is None:
                    from awq_compile.formats.convert import convert
                    kplanes = convert(std, "kplanes")
                w = kplanes
            _run_cfg(spec, x, w, out, target)            # warm-up (compile), skipped by ncu's --launch-skip
            torch.cuda.synchronize()
            _run_cfg(spec, x, w, out, target)
            torch.cuda.synchronize()
            print(f"launched {spec} M={M}", flush=True)


if __name__ == "__main__":
    main()
