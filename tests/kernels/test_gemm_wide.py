"""``triton_gemm_wide`` (prefill GEMM: 16-bit decode of the whole K tile, one dot per tile, SS or transposed
register-A formulation, optional persistent grid) against float64 on fresh random tiny shapes.

Under ``TRITON_INTERPRET=1`` on CPU (conftest), the real kernel on a GPU.  Outputs are NaN-poisoned before
each launch and every case runs twice (split-K must leave its workspace clean)."""

import pytest
import torch

from awq_compile.formats.standard import dequantize_standard
from awq_compile.kernels.specs import triton_gemm_wide
from test_triton_kernels import TOL, _case, _run, launch, prune

WIDE = [
    dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64),
    dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, TRANS=1),
    dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=64, SPLIT_K=3, TRANS=1),
    dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, SPLIT_K=2),
    dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, GROUP_M=2, PERSIST=1),
    dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, GROUP_M=1, PERSIST=2, TRANS=1),
]


def _ids(cfgs):
    return ["-".join(f"{a}{v}" for a, v in c.items()) for c in cfgs]


@pytest.mark.parametrize("cfg", WIDE, ids=_ids(WIDE))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_wide_gemm_matches_float64(cfg, dtype, monkeypatch):
    # one program "per SM" so a persistent grid of 1-2 programs walks all 6-9 tiles of these shapes
    monkeypatch.setitem(triton_gemm_wide.PERSIST_PROGRAMS, "cuda", 1)
    seed = torch.randint(0, 10**6, ()).item()
    # N=72: a partial column tile; M=3 / 40: partial row tiles; K=384 = six tiles of 64, three of 128
    for i, (M, zeros, bias) in enumerate(((3, True, True), (40, False, False))):
        x, q, qz, s, b, ref = _case(M, 384, 72, 128, dtype, zeros, bias, seed=seed + i)
        _run("triton_gemm_wide", cfg, x, q, qz, s, b, 128, ref, dtype)


def test_wide_gemm_weight_is_rounded_like_the_users_dequant():
    # (q - z) * s in fp16, rounded once: the product matches x @ W_fp16 to fp32-accumulation noise
    for cfg in (dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128), dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, TRANS=1)):
        x, q, qz, s, b, _ = _case(5, 256, 64, 128, torch.float16, True, False, seed=torch.randint(0, 999, ()).item())
        w16 = dequantize_standard(q.cpu(), qz.cpu(), s.cpu(), 128, torch.float16)
        ref16 = x.cpu().double() @ w16.double()
        out = torch.full((5, 64), float("nan"), dtype=torch.float16, device=x.device)
        launch("triton_gemm_wide", x, q, qz, s, None, out, 128, cfg)
        err = (out.cpu().double() - ref16).norm() / ref16.norm()
        assert err < 1e-3, (cfg, float(err))


@pytest.mark.parametrize("x_dtype, s_dtype", [(torch.float16, torch.bfloat16), (torch.bfloat16, torch.float16)],
                         ids=["x16-sbf16", "xbf16-s16"])
def test_wide_gemm_with_scales_in_another_dtype(x_dtype, s_dtype):
    x, q, qz, s, b, ref = _case(3, 256, 40, 128, s_dtype, True, False, seed=torch.randint(0, 999, ()).item())
    x = x.to(x_dtype)
    ref = x.cpu().double() @ dequantize_standard(q.cpu(), qz.cpu(), s.cpu(), 128, torch.float64)
    for cfg in (dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128), dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, TRANS=1)):
        _run("triton_gemm_wide", cfg, x, q, qz, s, None, 128, ref, x_dtype)
    assert TOL[x_dtype]


def test_wide_gemm_pruning():
    base = dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64)
    assert prune("triton_gemm_wide", base, K=4096, N=4096, group_size=128) is None
    assert "PERSIST" in prune("triton_gemm_wide", dict(base, PERSIST=1, SPLIT_K=2), K=4096, N=4096,
                              group_size=128)
    assert "group size" in prune("triton_gemm_wide", dict(base, BLOCK_K=128), K=4096, N=4096, group_size=64)
    assert "shared memory" in prune("triton_gemm_wide", dict(base, BLOCK_M=256, BLOCK_N=256, BLOCK_K=128, num_stages=4),
                                    K=4096, N=4096, group_size=128, shared_limit=232448)
