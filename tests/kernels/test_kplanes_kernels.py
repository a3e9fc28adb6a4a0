"""Every kernel that may run on a kplanes weight (formats/kplanes.py), reading it, against float64.

A target whose table declares ``"layout": "kplanes"`` (sm90) prepares a layer's weight once, in that
layout, so every kernel its plan can pick -- GEMV (plain and FMA_DECODE), streaming GEMV, the GEMMs, the
dequant + matmul path and the stripe kernel -- must read it.  Tiny shapes under the interpreter: K = 256
or 384 (two or three 128-row blocks; BLOCK_K 32 / 64 / 128 / 256 each meet the permutation differently),
N = 72 (ragged against every BLOCK_N), fresh random data per case, NaN-poisoned outputs, two calls (split-K
and stripe workspaces must be left clean).  The GEMMs with BLOCK_K < 128 read x regrouped by the launch
(``LaunchPlan.x_kplanes``), so those cases cover that permutation too.
"""


def test_gemms_with_k_tiles_below_128_regroup_x_once_per_call():
    from awq_compile.kernels.problem import Problem
    from awq_compile.kernels.spec import plan_launch

    for kid, cfg in (("triton_gemm_wide", dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, TRANS=1)),
                     ("triton_gemm", dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=32))):
        spec = get_spec(kid)
        config, opts = spec.parse(cfg, kid, backend=None, table=False)
        p = Problem(4096, 4096, 128, True, "float16", m=256)
        assert plan_launch(spec, config, opts, p.with_layout("kplanes"), TARGET).x_kplanes == cfg["BLOCK_K"]
        assert plan_launch(spec, config, opts, p, TARGET).x_kplanes == 0
        big = spec.parse(dict(cfg, BLOCK_K=128), kid, backend=None, table=False)
        assert plan_launch(spec, *big, p.with_layout("kplanes"), TARGET).x_kplanes == 0   # contiguous as it is

import pytest
import torch

from awq_compile.formats.kplanes import to_kplanes
from awq_compile.kernels.specs import get_spec
from awq_compile.kernels.triton.launch import run
from awq_compile.target import Target, interpreter_active
from _util import kernel_case, rel_err

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TARGET = Target.parse("cuda:sm90")
TOL = {torch.float16: 3e-3, torch.bfloat16: 2e-2}

PATHS = [
    ("triton_gemv", dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=32, SPLIT_K=3)),
    ("triton_gemv", dict(BLOCK_M=1, BLOCK_N=64, BLOCK_K=128, SPLIT_K=2)),
    ("triton_gemv", dict(BLOCK_M=1, BLOCK_N=64, BLOCK_K=32, SPLIT_K=2, FMA_DECODE=1)),
    ("triton_gemv", dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=128, SPLIT_K=3, FMA_DECODE=1)),
    ("triton_gemv", dict(BLOCK_M=2, BLOCK_N=32, BLOCK_K=64, SPLIT_K=1)),
    ("triton_gemv_stream", dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=128, SPLIT_K=2)),
    ("triton_gemv_stream", dict(BLOCK_M=2, BLOCK_N=32, BLOCK_K=64, SPLIT_K=1)),
    ("triton_dequant_mm", dict(BLOCK_N=32, BLOCK_K=32)),
    ("triton_dequant_mm", dict(BLOCK_N=32, BLOCK_K=128)),
    ("triton_gemm", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, SPLIT_K=2)),
    ("triton_gemm", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, SPLIT_K=1, SCALE_AFTER=1)),
    ("triton_gemm_planes", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, SPLIT_K=2, TRANS=1, XPERM=1)),
    ("triton_gemm_planes", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, SPLIT_K=1, SCALE_AFTER=1)),
    ("triton_gemm_wide", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, SPLIT_K=2, TRANS=1)),
    ("triton_gemm_wide", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, TRANS=1)),
    ("triton_gemm_wide", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, PERSIST=1)),
    ("triton_gemm_wide", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, TRANS=1)),
    ("triton_gemm", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, SPLIT_K=1)),
    ("triton_stripe", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, STAGES=2, PER_SM=1)),
    ("triton_stripe", dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=128, DOT=0, STAGES=2, PER_SM=1)),
]


def _launch(kid, cfg, x, q, qz, s, b, out, G):
    config, opts = get_spec(kid).parse(cfg, f"test config {cfg}", backend=None, table=False)
    return run(kid, config, opts, x, q, qz, s, b, out, G, TARGET, interpret=interpreter_active(), layout="kplanes")


@pytest.mark.parametrize("kid, cfg", PATHS, ids=[f"{k}-{'-'.join(f'{a}{v}' for a, v in c.items())}" for k, c in PATHS])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_kplanes_path_matches_float64(kid, cfg, dtype):
    spec = get_spec(kid)
    assert "kplanes" in spec.layouts
    M_small = 1 if spec.m_max is not None and spec.m_max <= 4 else 3
    cases = ((M_small, 384, 128, True, True), (2 if spec.m_max else 17, 256, 256, False, False))
    for i, (M, K, G, zeros, bias) in enumerate(cases):
        if cfg.get("BLOCK_M", 1) == 1 and M > 1 and kid == "triton_stripe" and cfg.get("DOT", 1):
            continue
        x, q, qz, s, b, ref = kernel_case(M, K, 72, G, dtype, zeros, bias, hash((kid, str(cfg), i)) % 1000, DEV)
        kq = to_kplanes(q.cpu()).to(DEV)
        assert not torch.equal(kq, q)
        out = torch.empty(M, 72, dtype=dtype, device=DEV)
        for _ in range(2):
            out.fill_(float("nan"))
            _launch(kid, cfg, x, kq, qz, s, b, out, G)
            assert torch.isfinite(out).all(), "an output element was not written"
            err = rel_err(out.cpu(), ref)
            assert err < TOL[dtype], (kid, cfg, M, K, G, err)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_x_regroup_moves_runs_wide_and_equals_the_element_order(dtype):
    # the regroup moves each run of BLOCK_K/8 columns as one wide element (16 bytes at fp16, BLOCK_K 64);
    # it must equal the element-wise permutation, also for an x whose storage offset forbids the wide view
    from awq_compile.kernels.triton.launch import kplanes_regroup

    g = torch.Generator().manual_seed(7)
    for bk in (16, 32, 64):
        for M, K in ((1, 256), (5, 512)):
            base = torch.randn(M * K + 3, generator=g).to(dtype)
            for x in (base[:M * K].view(M, K), base[3:].view(M, K)):
                want = x.reshape(M, K // 128, 8, 128 // bk, bk // 8).transpose(2, 3).reshape(M, K)
                got = kplanes_regroup(x, bk)
                assert torch.equal(got, want), (dtype, bk, M, K, x.storage_offset())
