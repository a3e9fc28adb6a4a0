"""Compile GEMV configs ahead of time for a GPU target and report what their TTGIR / PTX contain.

``python -m benchmarks.gemv_ir [--target cuda:sm90] [--K 4096 --N 14336] [SPEC ...]`` -- no GPU needed.
SPEC is a ``benchmarks.gemv_sweep`` config spelling (default: its ``shipped`` set).  Per config: registers and
spills (cuobjdump / ptxas), shared memory, the pipeliner's async copies (TTGIR
``async_copy_global_to_local``, PTX ``cp.async``), 16-byte global loads and CTA barriers in the PTX.
"""

from __future__ import annotations

import argparse
import os
import sys


def facts(spec: str, target: str, K: int, N: int, dtype: str) -> dict:
    from awq_compile.kernels import aot
    from awq_compile.target import Target

    from .gemv_sweep import parse
    from .wide_ir import compile_one

    kernel, values = parse(spec)
    c = compile_one(values, Target.parse(target), dtype, M=None, K=K, N=N, kernel=kernel)
    ttgir, ptx = c.asm["ttgir"], c.asm["ptx"]
    stats = aot._cuda_stats(c)
    return dict(spec=spec, regs=stats["registers"], spills=stats["spills"], shared=int(c.metadata.shared),
                async_copies=ttgir.count("async_copy_global_to_local"), cp_async=ptx.count("cp.async.c"),
                ld_v4=ptx.count("ld.global.v4") + ptx.count("ld.global.nc.v4"), bar=ptx.count("bar.sync"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("specs", nargs="*")
    ap.add_argument("--target", default="cuda:sm90")
    ap.add_argument("--K", type=int, default=4096)
    ap.add_argument("--N", type=int, default=14336)
    ap.add_argument("--dtype", default="float16")
    args = ap.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    from .gemv_sweep import SETS

    for spec in args.specs or SETS["shipped"]:
        try:
            print(facts(spec, args.target, args.K, args.N, args.dtype), flush=True)
        except Exception as e:
            print(dict(spec=spec, error=f"{type(e).__name__}: {str(e)[:300]}"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
