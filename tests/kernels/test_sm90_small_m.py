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


RS8 = "triton_gemm_rs 8x128x128 per_sm3 w4 st3"


@pytest.mark.parametrize("version", ["3.6", None])
def test_m2_to_4_take_the_persistent_register_operand_tile_per_measured_shape(version):
    # measured faster than the stripe tile (and the GEMV) on all six shapes at M = 2 and 4 (2026-12-02c sweep),
    # 4096x4096 at M = 2 included (10.2 us vs the GEMV's 11.6)
    for K, N in ((4096, 14336), (4096, 28672), (14336, 4096), (8192, 8192), (4096, 6144), (4096, 4096)):
        for M in (2, 3, 4):
            assert _label(K, N, M, version) == ("kplanes", RS8), (K, N, M)
    # N < 4096 is outside the guard (as in M 5..16): the GEMV, as before
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
