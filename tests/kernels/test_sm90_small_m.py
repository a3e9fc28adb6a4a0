"""sm90's M 1..4 buckets (2026-12-02 gemv sweep on kplanes weights, docs/performance.md): which kernel and
config each measured shape gets, in both tables, and what a layer without a kplanes form gets instead."""

import pytest

from awq_compile.kernels.problem import Problem
from awq_compile.kernels.registry import select
from awq_compile.target import Target

SM90 = Target.parse("cuda:sm90")


def _label(K, N, M, version, G=128, layout=None):
    plan = select(Problem(K, N, G, True, "float16"), SM90, triton_version=version, layout=layout)
    return plan.layout, plan.entry_for(M).label()


STRIPE = "triton_stripe 16x{bn}x128 stages3 per_sm{ps} dot trans slots w4 st1"


@pytest.mark.parametrize("version", ["3.6", None])
def test_m2_to_4_take_the_stripe_tile_per_measured_shape(version):
    want = {(4096, 14336): STRIPE.format(bn=256, ps=2), (4096, 28672): STRIPE.format(bn=256, ps=2),
            (14336, 4096): STRIPE.format(bn=128, ps=3), (8192, 8192): STRIPE.format(bn=128, ps=2),
            (4096, 6144): STRIPE.format(bn=128, ps=2)}
    for (K, N), label in want.items():
        for M in (2, 3, 4):
            assert _label(K, N, M, version) == ("kplanes", label), (K, N, M)
    # 4096x4096: the stripe tile only from M = 3 (at M = 2 the GEMV measured 11.7 us, the stripe 13.0)
    assert _label(4096, 4096, 2, version) == ("kplanes", "triton_gemv 1x256x32 sk32 w2 st1")
    assert _label(4096, 4096, 3, version) == ("kplanes", STRIPE.format(bn=128, ps=2))
    # N < 4096 is outside every stripe guard (as in M 5..16)
    assert _label(4096, 1024, 4, version)[1].startswith("triton_gemv ")


@pytest.mark.parametrize("version", ["3.6", None])
def test_m1_entries_per_measured_shape(version):
    assert _label(8192, 8192, 1, version)[1] == "triton_gemv 1x256x128 sk64 fma_decode w2 st1"
    assert _label(14336, 4096, 1, version)[1] == "triton_gemv 1x256x128 sk112 fma_decode w2 st1"
    for N in (4096, 6144, 14336):
        assert _label(4096, N, 1, version)[1] == "triton_gemv 1x256x128 sk32 fma_decode w2 st1"
    assert _label(4096, 28672, 1, version)[1] == "triton_gemv 1x256x32 sk32 fma_decode w1 st1"
    # a long K with a wide N (Llama-70B's down projection) still streams
    assert _label(28672, 8192, 1, version)[1].startswith("triton_gemv_stream 1x256x128 sk16")


def test_layers_without_a_kplanes_form_keep_the_gemv():
    # group 64: standard layout, the stripe entries (kplanes only) and BLOCK_K 128 tiles pass over
    for K, N in ((4096, 14336), (14336, 4096), (8192, 8192)):
        for M in (1, 2, 4):
            layout, label = _label(K, N, M, "3.6", G=64)
            assert layout == "standard" and label.startswith("triton_gemv"), (K, N, M, label)
            assert " 1x256x32 " in label or " 1x1024x32 " in label, label
    # and a plan asked for the standard layout is the GEMV plan it was
    assert _label(4096, 14336, 4, "3.6", layout="standard")[1] == "triton_gemv 1x1024x32 sk32 fma_decode w4 st1"
    assert _label(14336, 4096, 4, "3.6", layout="standard")[1] == "triton_gemv_stream 1x256x128 sk16 w4 st1"
