"""``triton_gemm_wide`` (prefill GEMM: 16-bit decode of the whole K tile, one dot per tile, SS or transposed
register-A formulation, optional persistent grid) against float64 on fresh random tiny shapes.

Under ``TRITON_INTERPRET=1`` on CPU (conftest), the real kernel on a GPU.  Outputs are NaN-poisoned before
each launch and every case runs twice (split-K must leave its workspace clean)."""

import dataclasses

import pytest
import torch

from awq_compile.formats.standard import dequantize_standard
from awq_compile.kernels.problem import Problem
from awq_compile.kernels.spec import CudaLaunchOptions
from awq_compile.kernels.specs import get_spec, triton_gemm_wide
from awq_compile.kernels.triton import launch as launcher
from awq_compile.target import Target, interpreter_active
from _util import rel_err
from test_triton_kernels import TOL, _case, _run, launch, prune


@dataclasses.dataclass(frozen=True, order=True)
class FewSMs(Target):
    """sm90 with a handful of SMs: persistent and Stream-K grids of 2-7 programs on interpreter-sized
    problems (the grid comes from ``Target.compute_units``, an explicit fact of the target)."""

    units: int = 1

    @property
    def compute_units(self) -> int:
        return self.units


def _run_on(units, cfg, x, q, qz, s, b, G, ref, dtype):
    """``_run`` on a target of ``units`` SMs: twice on NaN-poisoned outputs, then the shared workspace and
    tickets must be zero again (the split-K kernels read them as zeros)."""
    target = FewSMs("cuda", "sm90", units)
    config, opts = get_spec("triton_gemm_wide").parse(cfg, f"test config {cfg}", backend=None, table=False)
    out = torch.empty(x.shape[0], q.shape[1], dtype=dtype, device=x.device)
    for _ in range(2):
        out.fill_(float("nan"))
        launcher.run("triton_gemm_wide", config, opts, x, q, qz, s, b, out, G, target,
                     interpret=interpreter_active())
        assert torch.isfinite(out).all(), "an output element was not written"
        err = rel_err(out.cpu(), ref)
        assert err < TOL[dtype], (cfg, units, err)
    plan = launcher._plan("triton_gemm_wide", config, opts,
                          Problem(x.shape[1], q.shape[1], G, qz is not None,
                                  str(dtype)[6:], has_bias=b is not None, m=x.shape[0]), target,
                          interpreter_active())
    if plan.workspace is not None:
        ws, tickets = launcher._workspace().get(x.device, *plan.workspace)
        assert not ws.any() and not tickets.any(), "the workspace was not left zeroed"
    return plan

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
def test_wide_gemm_matches_float64(cfg, dtype):
    # one SM so a persistent grid of 1-2 programs walks all 3-9 tiles of these shapes
    seed = torch.randint(0, 10**6, ()).item()
    # N=72: a partial column tile; M=3 / 40: partial row tiles; K=384 = six tiles of 64, three of 128
    for i, (M, zeros, bias) in enumerate(((3, True, True), (40, False, False))):
        x, q, qz, s, b, ref = _case(M, 384, 72, 128, dtype, zeros, bias, seed=seed + i)
        _run_on(1, cfg, x, q, qz, s, b, 128, ref, dtype)


# Stream-K cases on M=40, K=384, N=72 with 16x32x64 tiles: 3 x 3 = 9 output tiles of six K tiles each.
# (SMs, STREAM_K): how the 54 (tile, K tile) iterations fall
STREAM_K = [
    # 9 tiles on 4 programs: 2 waves + 1 tile; its 6 K tiles cut 1/2/1/2 -- one tile split 4 ways
    (4, dict(PERSIST=1, STREAM_K=1)),
    # the partial wave + 1 full wave: 5 tiles = 30 K tiles in shares of 7/8/7/8; program 1's share ends one
    # split tile and starts the next (both of its slots), shares not a multiple of the 6 K tiles
    (4, dict(PERSIST=1, STREAM_K=2)),
    # every tile in the Stream-K region (all waves): 54 K tiles over 4 programs, 13/14/13/14
    (4, dict(PERSIST=1, STREAM_K=3)),
    # 9 tiles on 7 programs: one wave + 2 tiles -> 12 K tiles over 7 shares of 1-2: tile 0 split between 4
    # programs, tile 1 between 3; the other programs' 7 whole tiles follow
    (7, dict(PERSIST=1, STREAM_K=1, TRANS=1)),
    # PERSIST=2 on 2 SMs: 4 programs, the same as the first case through the other factor
    (2, dict(PERSIST=2, STREAM_K=1, TRANS=1, GROUP_M=1)),
]


@pytest.mark.parametrize("units, extra", STREAM_K, ids=[f"sm{u}-" + "-".join(f"{a}{v}" for a, v in e.items())
                                                        for u, e in STREAM_K])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_wide_gemm_stream_k_matches_float64(units, extra, dtype):
    cfg = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, **extra)
    seed = torch.randint(0, 10**6, ()).item()
    zeros, bias = (True, True) if dtype == torch.float16 else (False, False)
    x, q, qz, s, b, ref = _case(40, 384, 72, 128, dtype, zeros, bias, seed=seed)
    plan = _run_on(units, cfg, x, q, qz, s, b, 128, ref, dtype)
    progs = extra["PERSIST"] * units
    assert plan.grid == (progs, 1) and plan.workspace == (2 * progs * 16 * 32, 9)


def test_wide_gemm_stream_k_region_too_small_to_split():
    # 3 K tiles of 128 on 8 programs: the partial wave's one tile has fewer iterations than programs, so it
    # runs whole (program 0 takes it after its wave) -- every tile still written, once
    x, q, qz, s, b, ref = _case(40, 384, 72, 128, torch.float16, True, False, seed=torch.randint(0, 999, ()).item())
    _run_on(8, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, PERSIST=1, STREAM_K=1), x, q, qz, s, b, 128, ref,
            torch.float16)
    # M=3: a single row of 3 tiles on 2 programs, the partial wave's tile split 3/3
    x, q, qz, s, b, ref = _case(3, 384, 72, 128, torch.float16, False, True, seed=torch.randint(0, 999, ()).item())
    _run_on(2, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, PERSIST=1, STREAM_K=1, TRANS=1), x, q, qz, s, b, 128,
            ref, torch.float16)


def test_wide_gemm_stream_k_finisher_in_row_chunks():
    # 64x64 tiles: the finisher sums and writes a split tile in two chunks of 32 rows and releases through a
    # probe of 32 of its 64 rows; M=100 (a partial second row tile), 2 x 2 tiles on 3 programs: one wave +
    # 1 tile, its 6 K tiles cut 2/2/2 between all three
    x, q, qz, s, b, ref = _case(100, 384, 128, 128, torch.float16, True, True, seed=torch.randint(0, 999, ()).item())
    _run_on(3, dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, PERSIST=1, STREAM_K=1, TRANS=1), x, q, qz, s, b, 128, ref,
            torch.float16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the real grid: 132 concurrent programs on a GPU")
@pytest.mark.parametrize("K, N", [(4096, 14336), (14336, 4096)])
def test_wide_gemm_stream_k_at_scale_on_the_gpu(K, N):
    # the tables' tile on every SM: 112 / 32 tiles of 256x128 split 2-5 ways between 132 concurrent programs.
    # Before each thread released its own slot stores (H200, 2026-12-01 15:21 UTC) this config was wrong by
    # ~0.5 and its relaunches differed: the 128 KB partials were not ordered before the ticket
    from awq_compile.target import detect

    target = detect(torch.device("cuda"))
    spec = get_spec("triton_gemm_wide")
    cfg, opts = spec.parse(dict(BLOCK_M=256, BLOCK_N=128, BLOCK_K=64, TRANS=1, PERSIST=1, STREAM_K=1,
                                num_warps=8, num_stages=3), "scale", backend="cuda")
    x, q, qz, s, b, ref = _case(256, K, N, 128, torch.float16, True, False, seed=torch.randint(0, 999, ()).item())
    out = torch.empty(256, N, dtype=torch.float16, device="cuda")
    first = None
    for _ in range(5):
        out.fill_(float("nan"))
        launcher.run("triton_gemm_wide", cfg, opts, x, q, qz, s, None, out, 128, target, interpret=False)
        assert rel_err(out.cpu(), ref) < TOL[torch.float16]
        if first is None:
            first = out.clone()
        assert torch.equal(out, first), "Stream-K's fixed summation order must give bitwise equal relaunches"


def test_wide_stream_k_grid_and_workspace_from_the_target():
    cfg = triton_gemm_wide.GemmWideConfig(BLOCK_M=256, BLOCK_N=128, BLOCK_K=64, TRANS=True, PERSIST=1,
                                          STREAM_K=1)
    sm90, gfx942 = Target.parse("cuda:sm90"), Target.parse("hip:gfx942")
    assert (sm90.compute_units, gfx942.compute_units, Target.parse("cpu").compute_units) == (132, 304, 0)
    # 14336x4096 at M = 256: 32 tiles of 224 K tiles on all 132 SMs; two fp32 tile slots per program
    p = Problem(14336, 4096, 128, True, "float16", m=256)
    assert triton_gemm_wide.wide_grid_and_workspace(cfg, p, sm90.compute_units) == \
        ((132, 1), (2 * 132 * 256 * 128, 32))
    assert triton_gemm_wide.wide_grid_and_workspace(dataclasses.replace(cfg, PERSIST=2), p, 304)[0] == (608, 1)
    # never more programs than (tile, K tile) iterations
    tiny = Problem(128, 256, 128, True, "float16", m=16)
    assert triton_gemm_wide.wide_grid_and_workspace(cfg, tiny, 132)[0] == (4, 1)
    # the plan takes the count from the target it is made for
    plan = triton_gemm_wide.plan(cfg, CudaLaunchOptions(num_warps=8, num_stages=3), p, sm90, False)
    assert plan.grid == (132, 1) and plan.constexprs["STREAM_K"] == 1


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
    assert "needs PERSIST" in prune("triton_gemm_wide", dict(base, STREAM_K=1), K=4096, N=4096, group_size=128)
    assert prune("triton_gemm_wide", dict(base, STREAM_K=2, PERSIST=1), K=4096, N=4096, group_size=128) is None
    assert "group size" in prune("triton_gemm_wide", dict(base, BLOCK_K=128), K=4096, N=4096, group_size=64)
    assert "shared memory" in prune("triton_gemm_wide", dict(base, BLOCK_M=256, BLOCK_N=256, BLOCK_K=128, num_stages=4),
                                    K=4096, N=4096, group_size=128, shared_limit=232448)
