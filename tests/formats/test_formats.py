"""Packing, unpacking and conversion between AWQ, GPTQ and the standard layout."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from awq_compile.formats import (ORDER, REVERSE, SOURCE_FORMATS, Unpacked, dequantize, from_unpacked, get_format,
                                 pack_k, pack_n_interleaved, pack_n_sequential, quantize, to_awq, to_gptq,
                                 to_unpacked, unpack_k, unpack_n_interleaved, unpack_n_sequential)
from awq_compile.formats.standard import dequantize_standard


def u32(t):
    return int(t.item()) & 0xFFFFFFFF


def test_worked_examples_from_the_format_notes():
    codes = torch.arange(8, dtype=torch.uint8)[None]
    assert u32(pack_n_interleaved(codes)) == 0x75316420
    assert u32(pack_n_sequential(codes)) == 0x76543210
    assert u32(pack_k(codes.t().contiguous())) == 0x76543210
    zeros = torch.tensor([[3, 3, 3, 3, 8, 8, 8, 8]], dtype=torch.uint8)
    assert u32(pack_n_interleaved(zeros)) == 0x88338833


def test_order_tables_are_inverse():
    assert [ORDER[REVERSE[c]] for c in range(8)] == list(range(8))


def test_unpack_matches_bitwise_definition():
    # nibble i of word j holds column 8j + ORDER[i] (AWQ) / 8j + i (sequential) / row 8k + i (K-packed)
    words = torch.randint(-2**31, 2**31 - 1, (5, 3), dtype=torch.int32)
    w64 = words.to(torch.int64) & 0xFFFFFFFF
    awq = unpack_n_interleaved(words)
    seq = unpack_n_sequential(words)
    kp = unpack_k(words)
    for r in range(5):
        for j in range(3):
            for i in range(8):
                nib = int((w64[r, j] >> (4 * i)) & 15)
                assert awq[r, 8 * j + ORDER[i]] == nib
                assert seq[r, 8 * j + i] == nib
                assert kp[8 * r + i, j] == nib


@settings(max_examples=25, deadline=None)
@given(k8=st.integers(1, 12), n8=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_round_trips(k8, n8, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (8 * k8, 8 * n8), dtype=torch.uint8, generator=g)
    assert torch.equal(unpack_n_interleaved(pack_n_interleaved(codes)), codes)
    assert torch.equal(unpack_n_sequential(pack_n_sequential(codes)), codes)
    assert torch.equal(unpack_k(pack_k(codes)), codes)


@pytest.mark.parametrize("fmt", [f.name for f in SOURCE_FORMATS])
@pytest.mark.parametrize("G", [32, 64, 128])
def test_every_source_format_converts_to_standard(fmt, G):
    K, N = 256, 48
    f = get_format(fmt)
    u = quantize(torch.randn(K, N), G, symmetric=not f.has_zeros)
    if fmt == "gptq_v1":
        u.zeros = u.zeros.clamp(max=15)  # v1 stores z - 1 (z = 0 wraps to 15 and means 16)
        u.zeros[u.zeros == 0] = 1
    packed = to_awq(u) if f.packed_along == "N" else to_gptq(u, v1=fmt == "gptq_v1")
    back = f.to_unpacked(*packed)
    assert torch.equal(back.codes, u.codes)
    assert (back.zeros is None) == (u.zeros is None)
    if u.zeros is not None:
        assert torch.equal(back.zeros, u.zeros)
    std = f.to_standard(*packed, chunk_bytes=1024)  # many small chunks
    assert std.qweight.shape == (K // 8, N) and std.group_size == G
    assert torch.equal(to_unpacked(std).codes, u.codes)
    ref = u.dequantize(torch.float64)
    assert torch.equal(dequantize_standard(std.qweight, std.qzeros, std.scales, G, torch.float64), ref)


def test_gptq_v1_zero_of_16_is_refused():
    u = quantize(torch.randn(64, 16), 32)
    u.zeros[0, 0] = 0  # stored as 15 in v1, meaning 16
    q, qz, s = to_gptq(u, v1=True)
    with pytest.raises(ValueError, match="16"):
        get_format("gptq_v1").to_unpacked(q, qz, s)


def test_chunked_conversion_equals_whole_and_stays_small():
    K, N = 512, 64
    u = quantize(torch.randn(K, N), 128)
    q, qz, s = to_awq(u)
    whole = get_format("awq").to_standard(q, qz, s)
    chunked = get_format("awq").to_standard(q, qz, s, chunk_bytes=8 * N)  # 8 rows at a time
    assert torch.equal(whole.qweight, chunked.qweight) and torch.equal(whole.qzeros, chunked.qzeros)


def test_standard_shares_already_standard_qweight():
    u = quantize(torch.randn(128, 32), 64)
    q, qz, s = to_gptq(u)
    std = get_format("gptq_v2").to_standard(q, qz, s)
    assert std.qweight is q


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("G", [32, 128, -1])
def test_quantize_error_is_within_one_step(symmetric, G):
    w = torch.randn(256, 40)
    u = quantize(w, G, symmetric=symmetric)
    Gs = 256 if G == -1 else G
    step = u.scales.float().repeat_interleave(Gs, 0)
    err = (u.dequantize() - w).abs()
    # rounding costs half a step; the rounded zero point (or the clipped top code) at most another half
    assert bool((err <= step * (1 + 1e-3) + 1e-6).all())
    assert float(err.mean()) < 0.5 * float(step.mean())


def test_unpacked_validates_shapes():
    with pytest.raises(ValueError):
        Unpacked(torch.zeros(64, 8, dtype=torch.uint8), None, torch.ones(3, 8), 32)
    with pytest.raises(ValueError):
        Unpacked(torch.zeros(64, 8, dtype=torch.uint8), None, torch.ones(2, 8), 48)


def test_dequantize_formula():
    codes = torch.randint(0, 16, (64, 16), dtype=torch.uint8)
    zeros = torch.randint(0, 16, (2, 16), dtype=torch.uint8)
    scales = torch.rand(2, 16, dtype=torch.float64) + 0.1
    w = dequantize(codes, zeros, scales, 32, torch.float64)
    k, n = 45, 7
    assert float(w[k, n]) == pytest.approx((int(codes[k, n]) - int(zeros[k // 32, n])) * float(scales[k // 32, n]))
    assert from_unpacked(Unpacked(codes, zeros, scales, 32)).qweight.dtype == torch.int32
