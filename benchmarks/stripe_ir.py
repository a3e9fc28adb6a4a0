"""Compile the stripe kernel ahead of time for a GPU target and report what its TTGIR and PTX contain.

``python -m benchmarks.stripe_ir [--target cuda:sm90] [--dump DIR]`` -- no GPU needed.  For each
config: async copies (the pipeliner's cp.async / TMA), the dot ops and whether the weight (operand A)
reaches ``warp_group_dot`` from registers, shared-memory allocations, registers and spills.
"""

from __future__ import annotations

import argparse
import os
import re

from awq_compile.kernels.triton.stripe import StripeConfig, _stripe_kernel
from awq_compile.target import Target


def compile_config(cfg: StripeConfig, target: Target, M=16, N=14336, K=4096, G=128, dtype="fp16"):
    import triton
    from triton.compiler import ASTSource

    ptr = "*" + dtype
    sig = {"x_ptr": ptr, "qw_ptr": "*i32", "qz_ptr": "*i32", "s_ptr": ptr, "bias_ptr": ptr, "out_ptr": ptr,
           "ws_ptr": "*fp32", "lock_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32", "C_MAX": "i32", "stride_xm": "i32",
           "stride_qk": "i32", "stride_zg": "i32", "stride_sg": "i32", "stride_om": "i32"}
    consts = dict(GROUP_SIZE=G, HAS_ZEROS=True, HAS_BIAS=False, BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N,
                  BLOCK_K=cfg.BLOCK_K, DOT=cfg.DOT, STAGES=cfg.STAGES, KPERM=cfg.KPERM,
                  EVEN_N=N % cfg.BLOCK_N == 0, TRANS=cfg.TRANS, SCALE_IN=cfg.SCALE_IN, WIDE=cfg.WIDE,
                  PAIRS=cfg.PAIRS, ASM=cfg.PAIRS, SLOTS=cfg.SLOTS,
                  FENCE=cfg.SLOTS, UPCAST=False)
    for k in consts:
        sig[k] = "constexpr"
    names = list(sig)
    attrs = {}
    div = [["tt.divisibility", 16]]
    for i, n in enumerate(names):
        if sig[n].startswith("*") or n in ("N", "K", "stride_xm", "stride_qk", "stride_zg", "stride_sg",
                                           "stride_om"):
            attrs[(i,)] = div
    src = ASTSource(fn=_stripe_kernel, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=target.to_triton(), options=dict(num_warps=cfg.num_warps, num_stages=1))


def summarise(c) -> dict:
    try:
        c._init_handles()          # on a GPU: loads the binary, which fills in registers and spills
    except Exception:
        pass
    ttgir = c.asm["ttgir"]
    ptx = c.asm.get("ptx", "")
    wgd = [l for l in ttgir.splitlines() if "warp_group_dot " in l]
    reg_a = sum(1 for l in wgd if re.search(r"warp_group_dot %\S+, %\S+, %\S+.*: tensor<", l))
    return dict(
        async_copies=ttgir.count("async_copy_global_to_local"), tma=ttgir.count("async_tma_copy"),
        wgmma=len(wgd), wgmma_reg_a=reg_a, wgmma_wait=ttgir.count("warp_group_dot_wait"), mma_v2=ttgir.count("tt.dot "), local_alloc=ttgir.count("local_alloc"),
        local_load=ttgir.count("local_load"), regs=getattr(c, "n_regs", None),
        spills=getattr(c, "n_spills", None), shared=c.metadata.shared,
        cp_async_ptx=ptx.count("cp.async.cg") + ptx.count("cp.async.ca"), ld_v4=ptx.count("ld.global.v4"),
        ld_shared_v4=ptx.count("ld.shared.v4"), st_shared=ptx.count("st.shared"))


VARIANTS = {
    "dot16": StripeConfig(BLOCK_M=16, BLOCK_N=128, STAGES=4),
    "m1_pairs_n256": StripeConfig(BLOCK_M=16, BLOCK_N=256, STAGES=3, PER_SM=2, PAIRS=True),
    "m64_pairs": StripeConfig(BLOCK_M=64, BLOCK_N=128, STAGES=3, PER_SM=2, PAIRS=True),
    "m256_pairs_in": StripeConfig(BLOCK_M=64, BLOCK_N=256, STAGES=3, PAIRS=True, SCALE_IN=True, num_warps=8),
    "dot16_pairs": StripeConfig(BLOCK_M=16, BLOCK_N=128, STAGES=3, PAIRS=True),
    "dot16_pairs_nt": StripeConfig(BLOCK_M=16, BLOCK_N=128, STAGES=3, PAIRS=True, TRANS=False),
    "dot128_pairs_in": StripeConfig(BLOCK_M=128, BLOCK_N=128, STAGES=3, PAIRS=True, SCALE_IN=True, num_warps=8),
    "dot16_wide": StripeConfig(BLOCK_M=16, BLOCK_N=128, STAGES=4, WIDE=True),
    "dot16_wide_in": StripeConfig(BLOCK_M=16, BLOCK_N=128, STAGES=4, WIDE=True, SCALE_IN=True),
    "dot128_wide_in": StripeConfig(BLOCK_M=128, BLOCK_N=128, STAGES=3, WIDE=True, SCALE_IN=True, num_warps=8),
    "dot16_nt_kperm": StripeConfig(BLOCK_M=16, BLOCK_N=128, STAGES=4, KPERM=True, TRANS=False),
    "dot16_in_kperm": StripeConfig(BLOCK_M=16, BLOCK_N=128, STAGES=4, KPERM=True, SCALE_IN=True),
    "dot128_in_kperm": StripeConfig(BLOCK_M=128, BLOCK_N=128, STAGES=3, KPERM=True, SCALE_IN=True, num_warps=8),
    "dot128_nt_in_kperm": StripeConfig(BLOCK_M=128, BLOCK_N=128, STAGES=3, KPERM=True, SCALE_IN=True,
                                       TRANS=False, num_warps=8),
    "dot16_kperm": StripeConfig(BLOCK_M=16, BLOCK_N=128, STAGES=4, KPERM=True),
    "fma1": StripeConfig(BLOCK_M=1, BLOCK_N=128, BLOCK_K=128, DOT=False, STAGES=4),
    "dot64_kperm": StripeConfig(BLOCK_M=64, BLOCK_N=128, STAGES=3, KPERM=True),
    "dot128_kperm": StripeConfig(BLOCK_M=128, BLOCK_N=128, STAGES=3, KPERM=True, num_warps=8),
}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="cuda:sm90")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--dump", default=None)
    args = ap.parse_args(argv)
    t = Target.parse(args.target)
    for name in args.variants.split(","):
        try:
            c = compile_config(VARIANTS[name], t)
        except Exception as e:
            print(f"{name}: compile failed: {type(e).__name__}: {str(e)[:400]}")
            continue
        print(name, summarise(c), flush=True)
        if args.dump:
            os.makedirs(args.dump, exist_ok=True)
            for ext in ("ttgir", "ptx"):
                with open(os.path.join(args.dump, f"{name}.{ext}"), "w") as f:
                    f.write(c.asm.get(ext, ""))


if __name__ == "__main__":
    main()
