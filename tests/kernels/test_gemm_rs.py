"""``triton_gemm_rs`` (kernels/triton/gemm_rs.py): the Gluon register-operand GEMM for Hopper.

Gluon has no interpreter, so on a CPU machine the kernel is compiled for sm90 (the Triton installed: 3.9 in
CI, 3.6 on the device) and its TTGIR read: every wgmma takes the decoded weight from registers, the layout
change into the operand layout is trivial (the kernel asserts it at compile time), nothing decoded is stored to
shared memory, no spills.  On an sm90 GPU it runs against float64 on fresh random data: ragged M and N tiles,
split-K, fp16 and bf16, with and without zero points, with bias, and an x whose rows are not 16-byte aligned
(the launcher hands the kernel an aligned copy).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from awq_compile.kernels import aot
from awq_compile.kernels.problem import Problem
from awq_compile.kernels.spec import LaunchOptions, plan_launch
from awq_compile.kernels.specs import get_spec
from awq_compile.target import Target

from _util import kernel_case, rel_err

SM90 = Target.parse("cuda:sm90")

_IR = r"""
import json, re, sys
from awq_compile.kernels import aot
from awq_compile.kernels.aot import AotRequest

BAR = re.compile(r"\bbar(?:rier)?\.sync")

def wait_bars(ptx):
    # CTA barriers after an in-loop wgmma wait (one that leaves MMAs in flight) in its basic block, before the
    # next copy wait or MMA (a branch into the K remainder starts with a barrier of its own: not counted)
    n, after = 0, False
    for l in ptx.splitlines():
        if re.search(r"wgmma\.wait_group\.sync\.aligned\s+[1-9]", l):
            after = True
        elif re.search(r"cp\.async\.wait_group|wgmma\.mma_async|wgmma\.wait_group|^\$L__BB", l):
            after = False
        elif after and BAR.search(l):
            n, after = n + 1, False
    return n

def loop_bars(ptx):
    # CTA barriers inside the K loop: from its header label to the branch back to it
    lines = ptx.splitlines()
    head = next((i for i, l in enumerate(lines) if "Inner Loop Header" in l), None)
    if head is None:
        return None
    label = lines[head].split(":")[0].strip()
    back = next((i for i in range(len(lines) - 1, head, -1)
                 if re.search(r"\bbra(\.uni)?\s+" + re.escape(label) + ";", lines[i])), None)
    if back is None:
        return None
    return sum(1 for l in lines[head:back] if BAR.search(l))

out = []
for cfg, dtype, zeros, bias in json.loads(sys.argv[1]):
    req = AotRequest.make("triton_gemm_rs", cfg, "cuda:sm90", act_dtype=dtype, has_zeros=zeros, has_bias=bias,
                          K=4096, N=14336, layout="kplanes")
    c = aot.compile_request(req)
    ttgir, ptx = c.asm["ttgir"], c.asm["ptx"]
    dots = [l for l in ttgir.splitlines() if "ttng.warp_group_dot " in l]
    allocs = [l for l in ttgir.splitlines() if "ttg.local_alloc" in l]
    stats = aot._cuda_stats(c)
    out.append(dict(dots=len(dots), reg_a=sum(1 for l in dots if re.search(r"warp_group_dot %[^,]+, %[^,]+, .*: tensor<", l)),
                    allocs=[re.search(r"memdesc<([^,]+),", l).group(1) for l in allocs],
                    stores=ttgir.count("ttg.local_store"), spills=stats.get("spills", 0),
                    wgmma=len(re.findall(r"wgmma.mma_async", ptx)), fence=ptx.count("fence.acq_rel.gpu"),
                    wait_bars=wait_bars(ptx), loop_bars=loop_bars(ptx),
                    ticket=len(re.findall(r"atom\.global\.gpu\.acq_rel\.add", ptx)),
                    l2_reads=len(re.findall(r"ld\.global\.cg", ptx)),
                    odd_masks=ptx.count("0x00F000F0"), shifts=len(re.findall(r"shr\.b32 t, t, 4", ptx)),
                    act_muls=len(re.findall(r"\bmul(?:\.rn)?\.b?f16(?:x2)?\s", ptx)),
                    f32_fmas=len(re.findall(r"\bfma\.rn\.f32\s", ptx))))
print(json.dumps(out))
"""

_CASES = [
    (dict(BLOCK_M=256, BLOCK_N=128, num_warps=8, num_stages=3), "float16", True, False),
    (dict(BLOCK_M=64, BLOCK_N=64, SPLIT_K=4, num_warps=4, num_stages=4), "bfloat16", True, True),
    (dict(BLOCK_M=64, BLOCK_N=64, MMA_DEPTH=2, num_warps=4, num_stages=5), "float16", False, False),
    (dict(BLOCK_M=16, BLOCK_N=256, PER_SM=1, num_warps=8, num_stages=4), "float16", True, True),
    (dict(BLOCK_M=8, BLOCK_N=128, PER_SM=3, num_warps=4, num_stages=3), "bfloat16", False, False),
    (dict(BLOCK_M=64, BLOCK_N=64, UNROLL=1, num_warps=4, num_stages=4), "float16", True, False),
    (dict(BLOCK_M=128, BLOCK_N=128, SPLIT_K=2, UNROLL=1, num_warps=8, num_stages=3), "bfloat16", True, True),
    (dict(BLOCK_M=64, BLOCK_N=64, MMA_DEPTH=2, UNROLL=1, num_warps=4, num_stages=5), "float16", False, False),
    (dict(BLOCK_M=16, BLOCK_N=128, PER_SM=3, UNROLL=1, num_warps=4, num_stages=3), "bfloat16", True, False),
    (dict(BLOCK_M=64, BLOCK_N=64, ACC_SCALE=1, num_warps=4, num_stages=4), "float16", True, False),
    (dict(BLOCK_M=64, BLOCK_N=128, SPLIT_K=2, ACC_SCALE=1, num_warps=8, num_stages=4), "bfloat16", False, True),
    (dict(BLOCK_M=16, BLOCK_N=128, PER_SM=3, ACC_SCALE=1, num_warps=4, num_stages=3), "float16", True, True),
]


def test_every_wgmma_takes_the_decoded_weight_from_registers():
    out = subprocess.run([sys.executable, "-c", _IR, json.dumps(_CASES)], capture_output=True, text=True,
                         env=aot._child_env())
    assert out.returncode == 0, out.stderr[-3000:]
    for (cfg, dtype, zeros, bias), r in zip(_CASES, json.loads(out.stdout.strip().splitlines()[-1])):
        # one register-A wgmma per nibble plane (unrolled: STAGES units per round and up to STAGES - 1 after it)
        bodies = 2 * cfg["num_stages"] - 1 if cfg.get("UNROLL") else 1
        assert r["dots"] == 8 * bodies and r["reg_a"] == 8 * bodies, (cfg, r)
        if not cfg.get("PER_SM"):
            # one CTA barrier per unit in the unrolled K loop (STAGES units per trip), two in the rolled one (its
            # barrier pass adds one before the refill: it cannot prove the dynamic slot differs from the one read)
            assert r["loop_bars"] == (cfg["num_stages"] if cfg.get("UNROLL") else 2), (cfg, r)
        # no CTA barrier after the waits that only bound the MMAs in flight (Triton 3.9 put one after each of the
        # 8 per K tile with 8 warps: the wait then stood for every warp group's MMAs unless marked warp-group local)
        assert r["wait_bars"] == 0, (cfg, r)
        # the only shared memory: the x ring and the packed words (and the epilogue's layout change, fp32)
        assert all(a.endswith(("xf16", "xbf16", "xi32")) for a in r["allocs"]), (cfg, r["allocs"])
        assert r["stores"] == 0, (cfg, r)                           # nothing decoded goes to shared memory
        assert r["spills"] == 0 and r["wgmma"] >= 8, (cfg, r)
        shared = cfg.get("SPLIT_K", 1) > 1 or cfg.get("PER_SM", 0) > 0       # tiles reduced through the workspace
        # a shared tile: relaxed adds, a CTA barrier, one thread's acq_rel ticket (no fence per thread), the sums
        # read from L2 by the last contributor
        # (a persistent grid finishes tiles inside the loop: one ticket per unit body)
        tickets = (bodies if cfg.get("PER_SM") else 1) if shared else 0
        assert r["fence"] == 0 and r["ticket"] == tickets, (cfg, r)
        assert (r["l2_reads"] > 0) == shared, (cfg, r)
        # odd nibble planes: fp16 masks bits 4..7 in place under the magic 64 (no shift); bf16 shifts them down
        if dtype == "float16":
            assert r["odd_masks"] > 0 and r["shifts"] == 0, (cfg, r)
        else:
            assert r["odd_masks"] == 0 and r["shifts"] > 0, (cfg, r)
        # the group scale: one multiply per decoded K row in the activation dtype, or (ACC_SCALE) none, and an fp32
        # FMA per accumulator element per K tile instead (BLOCK_N x BLOCK_M over the threads; twice in a rolled
        # loop of a grid without stripes: the loop's and the last tile's after it)
        if cfg.get("ACC_SCALE"):
            per_thread = cfg["BLOCK_N"] * cfg["BLOCK_M"] // (32 * cfg["num_warps"])
            assert r["act_muls"] == 0 and r["f32_fmas"] >= per_thread, (cfg, r)
        else:
            assert r["act_muls"] > 0, (cfg, r)


def test_the_spec_refuses_what_the_kernel_cannot_do():
    spec = get_spec("triton_gemm_rs")
    kp = Problem(4096, 14336, 128, True, "float16", m=256, layout="kplanes")
    cfg, opts = spec.parse(dict(BLOCK_M=256, BLOCK_N=128, num_warps=8, num_stages=3), "t", backend="cuda")
    assert spec.reason(kp, SM90) is None and cfg.check(opts, kp, 232448) is None
    assert "sm90 only" in spec.reason(kp, Target.parse("cuda:sm80"))
    assert "cuda" in spec.reason(kp, Target.parse("hip:gfx942"))
    assert "kplanes" in spec.reason(kp.with_layout("standard"), SM90)
    for keys, why in ((dict(BLOCK_M=12), "multiple of 8"), (dict(BLOCK_N=96), "power-of-two multiple"),
                      (dict(UNROLL=1, num_stages=6), "3..5 slots"),
                      (dict(SPLIT_K=24), "at least one"), (dict(MMA_DEPTH=3), "1 or 2"),
                      (dict(PER_SM=2, SPLIT_K=2), "needs SPLIT_K = 1")):
        c, o = spec.parse(dict(dict(BLOCK_M=64, BLOCK_N=128, num_warps=8, num_stages=3), **keys), "t", backend="cuda")
        assert why in c.check(o, kp, 232448), keys
    c, o = spec.parse(dict(BLOCK_M=256, BLOCK_N=128, num_warps=8, num_stages=4), "t", backend="cuda")
    assert "shared memory" in c.check(o, kp, 232448)                # a 4-deep ring of 256-token x tiles
    c, o = spec.parse(dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2), "t", backend="cuda")
    assert ">= 3" in c.check(o, kp, 232448)
    with pytest.raises(ValueError, match="interpreter"):
        plan_launch(spec, cfg, opts, kp, SM90, interpret=True)
    lp = plan_launch(spec, cfg, opts, kp, SM90)
    assert lp.constexprs["STAGES"] == 3 and "num_stages" not in lp.options and lp.x_aligned
    assert lp.grid == (14336 // 128, 1, 1) and lp.workspace is None
    # the persistent grid: PER_SM programs on each of the target's 132 SMs, at most one per (tile, K tile) unit
    c, o = spec.parse(dict(BLOCK_M=16, BLOCK_N=256, PER_SM=2, num_warps=8, num_stages=4), "t", backend="cuda")
    small = Problem(4096, 14336, 128, True, "float16", m=16, layout="kplanes")
    lp = plan_launch(spec, c, o, small, SM90)
    assert lp.grid == (264,) and lp.constexprs["STRIPES"] and "PER_SM" not in lp.constexprs
    assert lp.workspace == (16 * 14336, 14336 // 256)
    tiny = Problem(256, 512, 128, True, "float16", m=16, layout="kplanes")            # 2 tiles x 2 K tiles
    assert plan_launch(spec, c, o, tiny, SM90).grid == (4,)
    assert c.shared_bytes(o) == 4 * (16 * 128 * 2 + 16 * 256 * 4) + 16 * 256 * 4     # + the epilogue's own scratch


def _sm90_gpu() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


@pytest.mark.skipif(not _sm90_gpu(), reason="needs an sm90 GPU (Gluon has no interpreter)")
@pytest.mark.parametrize("keys", [dict(BLOCK_M=256, BLOCK_N=128, num_warps=8, num_stages=3),
                                  dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=4),
                                  dict(BLOCK_M=64, BLOCK_N=64, SPLIT_K=4, num_warps=4, num_stages=4),
                                  dict(BLOCK_M=64, BLOCK_N=64, MMA_DEPTH=2, num_warps=4, num_stages=5),
                                  dict(BLOCK_M=16, BLOCK_N=64, SPLIT_K=3, num_warps=4, num_stages=8),
                                  dict(BLOCK_M=8, BLOCK_N=64, MMA_DEPTH=2, num_warps=4, num_stages=4)],
                         ids=lambda k: "-".join(f"{a}{b}" for a, b in k.items()))
def test_matches_float64_on_the_gpu(keys):
    bm, bn = keys["BLOCK_M"], keys["BLOCK_N"]
    _check_on_the_gpu(keys, 128 * 7, 2 * bn + 8)         # 7 K tiles (an uneven split), a ragged column tile


@pytest.mark.skipif(not _sm90_gpu(), reason="needs an sm90 GPU (Gluon has no interpreter)")
@pytest.mark.parametrize("keys", [dict(BLOCK_M=16, BLOCK_N=128, PER_SM=1, num_warps=4, num_stages=4),
                                  dict(BLOCK_M=16, BLOCK_N=256, PER_SM=2, num_warps=8, num_stages=4),
                                  dict(BLOCK_M=64, BLOCK_N=64, PER_SM=2, MMA_DEPTH=2, num_warps=4, num_stages=4),
                                  dict(BLOCK_M=8, BLOCK_N=128, PER_SM=3, num_warps=4, num_stages=3)],
                         ids=lambda k: "-".join(f"{a}{b}" for a, b in k.items()))
def test_the_persistent_grid_matches_float64_on_the_gpu(keys):
    """Runs of (tile, K tile) units that start and end inside tiles, several token tiles, tiles with 2..n
    contributors (24 K tiles of 9 ragged column tiles on 132 or 264 programs), and a problem smaller than the
    grid (one unit per program, every tile reduced by all its K tiles' programs)."""
    _check_on_the_gpu(keys, 128 * 24, 8 * keys["BLOCK_N"] + 8)
    _check_on_the_gpu(keys, 128 * 3, keys["BLOCK_N"] + 8)


@pytest.mark.skipif(not _sm90_gpu(), reason="needs an sm90 GPU (Gluon has no interpreter)")
@pytest.mark.parametrize("keys", [dict(BLOCK_M=64, BLOCK_N=64, UNROLL=1, num_warps=4, num_stages=4),
                                  dict(BLOCK_M=128, BLOCK_N=128, UNROLL=1, num_warps=8, num_stages=3),
                                  dict(BLOCK_M=64, BLOCK_N=64, SPLIT_K=2, MMA_DEPTH=2, UNROLL=1, num_warps=4,
                                       num_stages=5),
                                  dict(BLOCK_M=16, BLOCK_N=128, PER_SM=1, UNROLL=1, num_warps=4, num_stages=4),
                                  dict(BLOCK_M=8, BLOCK_N=128, PER_SM=3, UNROLL=1, num_warps=4, num_stages=3)],
                         ids=lambda k: "-".join(f"{a}{b}" for a, b in k.items()))
def test_the_unrolled_ring_matches_float64_on_the_gpu(keys):
    """The ring unrolled by its depth: runs of a whole number of rounds (8 K tiles on 4 slots), rounds and a
    remainder of 1 .. STAGES - 1 units (7 K tiles: 4 + 3, 6 + 1, 5 + 2; split in two: 4 + 3 on 5 slots), runs
    shorter than one round (2 K tiles), and the persistent grid's runs that start and end inside tiles."""
    bn = keys["BLOCK_N"]
    for K in (128 * 8, 128 * 7, 128 * 2):
        _check_on_the_gpu(keys, K, 2 * bn + 8)
    if keys.get("PER_SM"):
        _check_on_the_gpu(keys, 128 * 24, 8 * bn + 8)


@pytest.mark.skipif(not _sm90_gpu(), reason="needs an sm90 GPU (Gluon has no interpreter)")
@pytest.mark.parametrize("keys", [dict(BLOCK_M=64, BLOCK_N=64, ACC_SCALE=1, num_warps=4, num_stages=4),
                                  dict(BLOCK_M=64, BLOCK_N=128, SPLIT_K=2, ACC_SCALE=1, num_warps=8, num_stages=4),
                                  dict(BLOCK_M=64, BLOCK_N=64, MMA_DEPTH=2, ACC_SCALE=1, num_warps=4, num_stages=3),
                                  dict(BLOCK_M=128, BLOCK_N=128, ACC_SCALE=1, num_warps=8, num_stages=4),
                                  dict(BLOCK_M=16, BLOCK_N=128, PER_SM=1, ACC_SCALE=1, num_warps=4, num_stages=3),
                                  dict(BLOCK_M=8, BLOCK_N=128, PER_SM=3, ACC_SCALE=1, num_warps=4, num_stages=3)],
                         ids=lambda k: "-".join(f"{a}{b}" for a, b in k.items()))
def test_the_scale_on_the_partial_matches_float64_on_the_gpu(keys):
    """ACC_SCALE: each K tile's partial added times its scale -- one K tile, several, an uneven split, the persistent
    grid's tiles that end inside the loop (the next unit must add a zero partial), and groups of 256 rows (one scale
    for two K tiles)."""
    bn = keys["BLOCK_N"]
    for K in (128, 128 * 7):
        _check_on_the_gpu(keys, K, 2 * bn + 8)
    _check_on_the_gpu(keys, 128 * 6, 2 * bn + 8, group=256)
    if keys.get("PER_SM"):
        _check_on_the_gpu(keys, 128 * 24, 8 * bn + 8)


def _check_on_the_gpu(keys, K, N, group=128):
    from awq_compile.formats.kplanes import to_kplanes
    from awq_compile.kernels.triton.launch import run

    spec = get_spec("triton_gemm_rs")
    config, opts = spec.parse(keys, "t", backend="cuda")
    bm = keys["BLOCK_M"]
    G = group
    seed = hash((K, N) + tuple(keys.items())) % 2**31
    for dtype, zeros, M, misaligned in ((torch.float16, True, bm + 3, False), (torch.bfloat16, False, 2 * bm, False),
                                        (torch.bfloat16, True, 5, True), (torch.float16, False, bm - 1, True)):
        for bias in (True, False):
            x, qw, qz, sc, b, ref = kernel_case(M, K, N, G, dtype, zeros, bias, seed, "cpu")
            x = x.cuda()
            if misaligned:                                  # a view 6 bytes off its rows' start
                x = torch.empty(M, K + 8, dtype=dtype, device="cuda")[:, 3:K + 3].copy_(x)
            out = torch.full((M, N), float("nan"), dtype=dtype, device="cuda")
            run("triton_gemm_rs", config, opts, x, to_kplanes(qw).cuda(), None if qz is None else qz.cuda(),
                sc.cuda(), None if b is None else b.cuda(), out, G, SM90, interpret=False, layout="kplanes")
            err = rel_err(out.cpu(), ref)
            assert err < (1e-2 if dtype == torch.bfloat16 else 1e-3), (keys, dtype, zeros, bias, M, misaligned, err)


def test_the_launcher_hands_an_aligned_copy_of_a_misaligned_x():
    """cp.async copies x rows 16 bytes at a time: a plan with ``x_aligned`` gets a copy of an x whose base is not
    16-byte aligned or whose row stride is not a multiple of 16 elements (what Triton specialises on), and the
    tensor itself otherwise."""
    from awq_compile.kernels.spec import LaunchPlan, fused_arguments
    from awq_compile.kernels.triton.launch import launch

    seen = []

    class Fake:
        def __getitem__(self, grid):
            return lambda *args, **kw: seen.append(args[0])

    plan = LaunchPlan("triton_gemm_rs", None, (1, 1, 1), {}, {}, fused_arguments, x_aligned=True)
    K, N = 256, 64
    qw, sc = torch.zeros(K // 8, N, dtype=torch.int32), torch.ones(K // 128, N, dtype=torch.float16)
    out = torch.empty(4, N, dtype=torch.float16)
    base = torch.randn(4, K + 24).half()
    for x, copied in ((base[:, :K].contiguous(), False), (base[:, 3:K + 3], True), (base[:, 8:K + 8], True),
                      (torch.randn(4, K + 16).half()[:, :K], False)):
        launch(plan, x, qw, None, sc, None, out, wrap=lambda p: (Fake(), {}))
        got = seen.pop()
        assert torch.equal(got, x) and (got.data_ptr() != x.data_ptr()) == copied, (x.stride(), x.data_ptr() % 16)
        assert got.data_ptr() % 16 == 0 and got.stride(0) % 16 == 0
