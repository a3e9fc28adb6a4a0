"""Numerics of every Triton kernel path against a float64 reference.

On a CPU machine these run under ``TRITON_INTERPRET=1`` (set by conftest) at tiny shapes; on a GPU they
run the real kernels.  Fresh random weights and activations for every case; outputs are poisoned with
NaN before each launch so an unwritten element fails; every case runs twice so split-K workspaces and
tickets must be left clean by the first call.
"""

import pytest
import torch

from awq_compile.formats.standard import dequantize_standard
from awq_compile.kernels.problem import Problem
from awq_compile.kernels.specs import get_spec
from awq_compile.kernels.triton.launch import run
from awq_compile.target import Target, interpreter_active
from _util import kernel_case, rel_err

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# the target launch options are planned for: the GPU here, else any (the interpreter takes no options)
TARGET = Target.parse("cuda:sm90")


def launch(kid, x, q, qz, s, b, out, G, cfg):
    """Run kernel ``kid`` with the config written as table keys (no launch options: compiler defaults)."""
    config, opts = get_spec(kid).parse(cfg, f"test config {cfg}", backend=None, table=False)
    return run(kid, config, opts, x, q, qz, s, b, out, G, TARGET, interpret=interpreter_active())


def prune(kid, cfg, *, K, N, group_size, shared_limit=0):
    config, opts = get_spec(kid).parse(cfg, f"test config {cfg}", backend=None, table=False)
    return config.check(opts, Problem(K, N, group_size, True, "float16"), shared_limit)
TOL = {torch.float16: 3e-3, torch.bfloat16: 2e-2}

# (kernel id, config): one per code path -- GEMV rows, GEMV split-K and multi-tile groups, GEMM with and
# without split-K, scale-after, dequant-then-matmul.
PATHS = [
    ("triton_gemv", dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=32, SPLIT_K=1)),
    ("triton_gemv", dict(BLOCK_M=1, BLOCK_N=64, BLOCK_K=16, SPLIT_K=3)),
    ("triton_gemv", dict(BLOCK_M=2, BLOCK_N=32, BLOCK_K=32, SPLIT_K=2)),
    ("triton_gemm", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, SPLIT_K=1)),
    ("triton_gemm", dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=32, SPLIT_K=3)),
    ("triton_gemm", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, SPLIT_K=2, SCALE_AFTER=1)),
    ("triton_dequant_mm", dict(BLOCK_N=32, BLOCK_K=32)),
]


def _case(M, K, N, G, dtype, zeros, bias, seed):
    return kernel_case(M, K, N, G, dtype, zeros, bias, seed, DEV)


def _run(kid, cfg, x, q, qz, s, b, G, ref, dtype):
    out = torch.empty(x.shape[0], q.shape[1], dtype=dtype, device=x.device)
    for _ in range(2):
        out.fill_(float("nan"))
        launch(kid, x, q, qz, s, b, out, G, cfg)
        assert torch.isfinite(out).all(), "an output element was not written"
        err = rel_err(out.cpu(), ref)
        assert err < TOL[dtype], (kid, cfg, err)


@pytest.mark.parametrize("kid, cfg", PATHS, ids=[f"{k}-{'-'.join(f'{a}{v}' for a, v in c.items())}" for k, c in PATHS])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_kernel_path_matches_float64(kid, cfg, dtype):
    # N=72 is not a multiple of any BLOCK_N (tail columns); M=3 / 17 leave partial row tiles;
    # zeros + bias on one case, symmetric without bias on the other
    for i, (M, zeros, bias) in enumerate(((3, True, True), (17, False, False))):
        x, q, qz, s, b, ref = _case(M, 128, 72, 64, dtype, zeros, bias, seed=hash((kid, str(cfg), i)) % 1000)
        _run(kid, cfg, x, q, qz, s, b, 64, ref, dtype)


# The nibble-plane GEMM (triton_gemm_planes: eight dots of K = BLOCK_K/8, decode in the activation dtype, optionally
# transposed so the weight is the left operand) and the streaming GEMV (triton_gemv_stream: next tile in
# registers) need BLOCK_K >= 128 / a whole number of K tiles per group, so they run at G=128, K=384:
# three K tiles of 128 (split-K 2 leaves one program a single tile), six of 64.
NEW_PATHS = [
    ("triton_gemm_planes", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, SPLIT_K=1)),
    ("triton_gemm_planes", dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, SPLIT_K=2, TRANS=1)),
    ("triton_gemm_planes", dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=128, SPLIT_K=1, TRANS=1, SCALE_AFTER=1)),
    ("triton_gemm_planes", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, SPLIT_K=3, SCALE_AFTER=1)),
    ("triton_gemm_planes", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, SPLIT_K=2, XPERM=1)),
    ("triton_gemm_planes", dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, SPLIT_K=1, TRANS=1, XPERM=1)),
    ("triton_gemv", dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=32, SPLIT_K=3, FMA_DECODE=1)),
    ("triton_gemv", dict(BLOCK_M=1, BLOCK_N=64, BLOCK_K=128, SPLIT_K=1, FMA_DECODE=1)),
    ("triton_gemv_stream", dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=64, SPLIT_K=4)),
    ("triton_gemv_stream", dict(BLOCK_M=1, BLOCK_N=64, BLOCK_K=128, SPLIT_K=1)),
    ("triton_gemv_stream", dict(BLOCK_M=2, BLOCK_N=32, BLOCK_K=128, SPLIT_K=2)),
]


@pytest.mark.parametrize("kid, cfg", NEW_PATHS,
                         ids=[f"{k}-{'-'.join(f'{a}{v}' for a, v in c.items())}" for k, c in NEW_PATHS])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_plane_and_stream_paths_match_float64(kid, cfg, dtype):
    for i, (M, zeros, bias) in enumerate(((3, True, True), (17, False, False))):
        x, q, qz, s, b, ref = _case(M, 384, 72, 128, dtype, zeros, bias, seed=hash((kid, str(cfg), i)) % 1000)
        _run(kid, cfg, x, q, qz, s, b, 128, ref, dtype)


def test_plane_gemm_weight_is_rounded_like_the_users_dequant():
    # without SCALE_AFTER the plane decode computes (q - z) * s in fp16 -- one rounding of the exact
    # product, the same as the eager dequant -- so it matches x @ W_fp16 to fp32-accumulation noise
    x, q, qz, s, b, _ = _case(5, 256, 64, 128, torch.float16, True, False, seed=11)
    w16 = dequantize_standard(q.cpu(), qz.cpu(), s.cpu(), 128, torch.float16)
    ref16 = x.cpu().double() @ w16.double()
    out = torch.empty(5, 64, dtype=torch.float16, device=x.device)
    launch("triton_gemm_planes", x, q, qz, s, None, out, 128, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128))
    assert rel_err(out.cpu(), ref16) < 1e-3


@pytest.mark.parametrize("x_dtype, s_dtype", [(torch.float16, torch.bfloat16), (torch.bfloat16, torch.float16)],
                         ids=["x16-sbf16", "xbf16-s16"])
def test_plane_gemm_with_scales_in_another_dtype(x_dtype, s_dtype):
    # a checkpoint's fp16 scales with bf16 activations (and the reverse) must not reach tl.dot mixed
    x, q, qz, s, b, ref = _case(3, 256, 40, 128, s_dtype, True, False, seed=5)
    x = x.to(x_dtype)
    ref = x.cpu().double() @ dequantize_standard(q.cpu(), qz.cpu(), s.cpu(), 128, torch.float64)
    for cfg in (dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, XPERM=1),
                dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, SCALE_AFTER=1)):
        _run("triton_gemm_planes", cfg, x, q, qz, s, None, 128, ref, x_dtype)


def test_plane_gemm_needs_a_dot_of_sixteen():
    why = prune("triton_gemm_planes", dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64), K=4096, N=4096,
                group_size=128, shared_limit=0)
    assert why and "PLANES needs BLOCK_K >= 128" in why
    assert prune("triton_gemm_planes", dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128), K=4096, N=4096,
                 group_size=64, shared_limit=0)      # BLOCK_K larger than the group


def test_group_smaller_than_block_rows_and_large_group():
    # G=32 with BLOCK_K=32 (one tile per group) and G=K (per-channel: SUB=K/BLOCK_K tiles per group)
    for G, cfg in ((32, dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=32, SPLIT_K=4)),
                   (128, dict(BLOCK_M=1, BLOCK_N=32, BLOCK_K=32, SPLIT_K=1))):
        x, q, qz, s, b, ref = _case(1, 128, 40, G, torch.float16, True, False, seed=G)
        _run("triton_gemv", cfg, x, q, qz, s, b, G, ref, torch.float16)


def test_split_k_workspace_is_reused_across_shapes():
    # a larger problem after a smaller one (workspace growth) and back, with one shared workspace
    cfg = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, SPLIT_K=2)
    for M, N in ((2, 32), (18, 64), (2, 32)):
        x, q, qz, s, b, ref = _case(M, 64, N, 32, torch.float16, True, True, seed=M * N)
        _run("triton_gemm", cfg, x, q, qz, s, b, 32, ref, torch.float16)


def test_prune_split_k_against_groups_and_tiles():
    cfg = dict(BLOCK_M=1, BLOCK_N=64, BLOCK_K=32, SPLIT_K=2)
    assert prune("triton_gemv", cfg, K=4096, N=64, group_size=128) is None
    assert "groups" in prune("triton_gemv", dict(cfg, SPLIT_K=64), K=4096, N=64, group_size=128)
    # the streaming GEMV splits K tiles, not groups
    assert prune("triton_gemv_stream", dict(cfg, SPLIT_K=64), K=4096, N=64, group_size=128) is None
    assert "K tiles" in prune("triton_gemv_stream", dict(cfg, SPLIT_K=256), K=4096, N=64, group_size=128)


def test_stripe_spec_refuses_the_fma_body_for_tables():
    """Triton 3.6 could not compile the stripe kernel's FMA body (DOT=0) for every problem on the H200, so the
    kernel layer never plans it; the matrix-unit body stays offered."""
    dot = dict(BLOCK_M=16, BLOCK_N=128, BLOCK_K=128, STAGES=3, PER_SM=2, num_stages=1)
    assert prune("triton_stripe", dot, K=4096, N=4096, group_size=128) is None
    why = prune("triton_stripe", dict(dot, BLOCK_M=1, DOT=0), K=4096, N=4096, group_size=128)
    assert why and "DOT=0" in why
