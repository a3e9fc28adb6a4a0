"""What Triton emits for ``triton_gemm_wide`` on a GPU target (no GPU needed): the dot's operand kinds,
the wgmma waits, async copies, shared-memory round trips, registers and spills.

``python -m benchmarks.wide_ir [--target cuda:sm90] [--configs BMxBNxBK:warps:stages[:t][:p],...] [--dump DIR]
[--layouts standard,kplanes]``  (``--layouts``: compile each config for each weight layout, side by side)

``warp_group_dot`` lines are classified by operand A: ``reg`` (a ``tensor<..., #dot_op>``, register-A
wgmma) or ``smem`` (a ``!ttg.memdesc``); ``waits`` lists the ``pendings`` of every
``warp_group_dot_wait`` (0 right after a dot: the chain is not pipelined).
"""

from __future__ import annotations

import argparse
import os
import re

from awq_compile.kernels.aot import AotRequest, compile_request
from awq_compile.target import Target

from .wide_sweep import parse

DEFAULT = ("128x256x64:8:3", "128x256x64:8:4", "128x128x128:8:3", "256x128x64:8:3", "128x128x64:4:3",
           "64x128x128:4:4", "128x256x64:8:3:t", "64x256x64:8:3:t", "128x256x64:8:3:p1")


def compile_one(cfg: dict, target: Target, act_dtype="float16", M=256, K=4096, N=14336, kernel="triton_gemm_wide",
                layout="standard"):
    """AOT-compile ``kernel`` with table keys ``cfg`` for ``target`` and the weight ``layout``; M specialises
    the launch's M argument (None: the planned problem's own)."""
    req = AotRequest.make(kernel, cfg, str(target), act_dtype=act_dtype, K=K, N=N, layout=layout)
    return compile_request(req, m=M)


def summarise(c) -> dict:
    from awq_compile.kernels.aot import _cuda_stats

    res = _cuda_stats(c)          # registers of the cubin (cuobjdump), spills from ptxas when it has a stack
    ttgir = c.asm["ttgir"]
    ptx = c.asm.get("ptx", "")
    dots = [l for l in ttgir.splitlines() if "ttng.warp_group_dot " in l]
    kinds = []
    for l in dots:
        types = l.rsplit("} :", 1)[-1]          # the operand types after the attribute dictionary
        kinds.append("reg" if types.strip().startswith("tensor<") else "smem")
    waits = re.findall(r"warp_group_dot_wait[^{]*\{pendings = (\d+)", ttgir)
    return dict(wgmma=",".join(kinds) or "-", is_async=ttgir.count("isAsync = true"), waits=",".join(waits) or "-",
                mma_sync=ttgir.count("tt.dot "), async_copies=ttgir.count("async_copy_global_to_local"),
                local_alloc=ttgir.count("ttg.local_alloc"), local_store=ttgir.count("ttg.local_store"),
                local_load=ttgir.count("ttg.local_load"), regs=res["registers"], spills=res["spills"],
                shared=c.metadata.shared,
                cp_async=ptx.count("cp.async.cg") + ptx.count("cp.async.ca"),
                wgmma_ptx=ptx.count("wgmma.mma_async"), wgmma_wait_ptx=ptx.count("wgmma.wait_group"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="cuda:sm90")
    ap.add_argument("--configs", default=",".join(DEFAULT))
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--kernel", default="triton_gemm_wide")
    ap.add_argument("--dump", default=None, help="write each config's TTGIR and PTX here")
    ap.add_argument("--layouts", default="standard", help="weight layouts to compile each config for")
    args = ap.parse_args(argv)
    target = Target.parse(args.target)
    import triton
    print(f"triton {triton.__version__}, target {target}")
    runs = [(spec, layout) for spec in args.configs.split(",") for layout in args.layouts.split(",")]
    for spec, layout in runs:
        name = spec if layout == "standard" else f"{spec} {layout}"
        try:
            c = compile_one(parse(spec), target, args.dtype, kernel=args.kernel, layout=layout)
        except Exception as e:  # a compile failure is a finding
            print(f"{name:24s} FAILED {type(e).__name__}: {str(e)[-300:]}")
            continue
        print(f"{name:24s} " + " ".join(f"{k}={v}" for k, v in summarise(c).items()), flush=True)
        if args.dump:
            os.makedirs(args.dump, exist_ok=True)
            base = os.path.join(args.dump, name.replace(":", "_").replace(" ", "_"))
            for kind in ("ttgir", "ptx"):
                with open(f"{base}.{kind}", "w") as f:
                    f.write(c.asm.get(kind, ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
