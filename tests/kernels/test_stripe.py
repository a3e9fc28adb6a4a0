"""The stripe kernel (``kernels/triton/stripe.py``) and the kplanes layout against float64.

Tiny shapes under the interpreter on CPU (real kernels on a GPU).  Grids are chosen so stripes meet
inside tiles (the workspace + ticket path) as well as cover whole tiles; every case runs three times on
NaN-poisoned outputs, so an unwritten element or a workspace/ticket left dirty by one call fails the next.
"""

import pytest
import torch

from awq_compile.formats import from_unpacked, quantize
from awq_compile.formats.kplanes import from_kpairs, from_kplanes, kplanes_reason, to_kpairs, to_kplanes
from awq_compile.kernels.triton.stripe import StripeConfig, check_config, stripe_grid, stripe_linear
from _util import kernel_case, rel_err

DEV = "cuda" if torch.cuda.is_available() else "cpu"
INTERP = DEV == "cpu"
TOL = {torch.float16: 1e-3, torch.bfloat16: 8e-3}


def _case(M, K, N, G, dtype, zeros, bias, seed):
    return kernel_case(M, K, N, G, dtype, zeros, bias, seed, DEV)


def _check(cfg, M, K, N, G, dtype, zeros, bias, sms, seed=0):
    x, q, qz, s, b, ref = _case(M, K, N, G, dtype, zeros, bias, seed)
    if cfg.KPERM:
        q = to_kplanes(q)
    if cfg.PAIRS:
        q = to_kpairs(q)
    out = torch.empty(M, N, dtype=dtype, device=DEV)
    for _ in range(3):
        out.fill_(float("nan"))
        stripe_linear(x, q, qz, s, b, G, cfg, out, sms=sms, interpret=INTERP)
        assert torch.isfinite(out).all(), "an output element was not written"
        err = rel_err(out.cpu(), ref)
        assert err < TOL[dtype], (cfg, M, err)


DOT = StripeConfig(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, DOT=True, STAGES=2, PER_SM=1)
FMA = StripeConfig(BLOCK_M=1, BLOCK_N=32, BLOCK_K=64, DOT=False, STAGES=2, PER_SM=1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("cfg, M, sms", [
    (DOT, 3, 5),                                   # 3 column tiles x 3 K tiles on 5 programs: stripes meet
    (DOT, 17, 2),                                  # two row tiles, partial second
    (DOT, 1, 100),                                 # more SMs than units: one unit per program, 3-way tiles
    (FMA, 1, 7),
    (FMA, 2, 1),                                   # one program walks every tile whole
    (StripeConfig(BLOCK_M=16, BLOCK_N=32, KPERM=True, STAGES=3, PER_SM=2), 5, 2),
    (StripeConfig(BLOCK_M=16, BLOCK_N=32, TRANS=False, PER_SM=1), 17, 5),
    (StripeConfig(BLOCK_M=16, BLOCK_N=32, SCALE_IN=True, KPERM=True, PER_SM=1), 3, 5),
    (StripeConfig(BLOCK_M=16, BLOCK_N=32, SCALE_IN=True, TRANS=False, PER_SM=1), 3, 4),
    (StripeConfig(BLOCK_M=16, BLOCK_N=32, WIDE=True, PER_SM=1), 3, 5),
    (StripeConfig(BLOCK_M=16, BLOCK_N=32, WIDE=True, SCALE_IN=True, PER_SM=1), 17, 3),
    (StripeConfig(BLOCK_M=16, BLOCK_N=32, PAIRS=True, PER_SM=1), 3, 5),
    (StripeConfig(BLOCK_M=16, BLOCK_N=32, PAIRS=True, TRANS=False, PER_SM=1), 17, 3),
    (StripeConfig(BLOCK_M=16, BLOCK_N=32, PAIRS=True, TRANS=False, SCALE_IN=True, PER_SM=1), 2, 4),
    (StripeConfig(BLOCK_M=16, BLOCK_N=32, PAIRS=True, SLOTS=False, PER_SM=1), 5, 5),
    (StripeConfig(BLOCK_M=1, BLOCK_N=32, BLOCK_K=64, DOT=False, SLOTS=False, PER_SM=1), 1, 7),
], ids=["dot-m3-meet", "dot-m17", "dot-m1-perunit", "fma-m1", "fma-m2-one-program", "dot-kperm",
        "dot-nt-m17", "dot-scalein-kperm", "dot-nt-scalein", "dot-wide", "dot-wide-scalein",
        "dot-pairs", "dot-pairs-nt", "dot-pairs-nt-scalein", "dot-atomic", "fma-atomic"])
def test_stripe_matches_float64(cfg, M, sms, dtype):
    _check(cfg, M, 384, 72, 128, dtype, zeros=True, bias=True, sms=sms)


def test_stripe_symmetric_no_bias_even_n():
    _check(DOT, 4, 256, 64, 128, torch.float16, zeros=False, bias=False, sms=3, seed=1)


@pytest.mark.xfail(DEV == "cuda", strict=False,
                   reason="Triton 3.6 on the H200 cannot compile the FMA body (DOT=0) with slots, an even N and no "
                          "zero points ('operand #0 does not dominate this use', 2026-12-01 night); the stripe spec "
                          "refuses DOT=0 for tables, so no plan reaches it")
def test_stripe_fma_symmetric_no_bias_even_n():
    _check(FMA, 1, 256, 64, 64, torch.float16, zeros=False, bias=False, sms=3, seed=2)


def test_stripe_grid_and_configs():
    assert stripe_grid(DOT, 16, 14336, 4096, 132) == 132                     # PER_SM=1
    assert stripe_grid(StripeConfig(PER_SM=2), 1, 64, 256, 132) == 2         # clamped to the unit count
    assert "BLOCK_K >= 128" in check_config(StripeConfig(BLOCK_K=64), K=256, N=64, group_size=128)
    assert "BLOCK_M = 1" in check_config(StripeConfig(DOT=False, BLOCK_M=16), K=256, N=64, group_size=128)
    assert "WIDE" in check_config(StripeConfig(WIDE=True, KPERM=True), K=256, N=64, group_size=128)
    assert "divid" in check_config(StripeConfig(BLOCK_K=128), K=256, N=64, group_size=64)
    with pytest.raises(ValueError, match="positive int"):
        StripeConfig(BLOCK_N=0)
    with pytest.raises(ValueError, match="K=384 but the weight holds 256"):
        stripe_linear(torch.zeros(1, 384), torch.zeros(32, 8, dtype=torch.int32), None,
                      torch.zeros(2, 8), None, 128, FMA)


def test_kplanes_is_a_permutation_of_k_blocks():
    torch.manual_seed(3)
    u = quantize(torch.randn(256, 24), 128, symmetric=False)
    std = from_unpacked(u)
    kp = to_kplanes(std.qweight)
    assert torch.equal(from_kplanes(kp), std.qweight)
    # word [16 t + r, n] nibble i holds row 128 t + 16 i + r
    for t, r, i, n in ((0, 0, 0, 0), (0, 3, 5, 7), (1, 15, 7, 23), (1, 9, 2, 11)):
        assert ((kp[16 * t + r, n] >> (4 * i)) & 15).item() == u.codes[128 * t + 16 * i + r, n].item()
    assert kplanes_reason(256, 128) is None and "multiple of 128" in kplanes_reason(256, 64)


def test_kpairs_is_a_permutation_of_k_blocks():
    torch.manual_seed(4)
    u = quantize(torch.randn(256, 16), 128, symmetric=False)
    std = from_unpacked(u)
    kp = to_kpairs(std.qweight)
    assert torch.equal(from_kpairs(kp), std.qweight)
    # word [16 t + r, n] nibble s holds row 128 t + 32 (s % 4) + 2 r + s // 4
    for t in range(2):
        for r in (0, 5, 15):
            for s_ in range(8):
                n = (t + r + s_) % 16
                row = 128 * t + 32 * (s_ % 4) + 2 * r + s_ // 4
                assert ((kp[16 * t + r, n] >> (4 * s_)) & 15).item() == u.codes[row, n].item()
