"""formats.convert: the one route between layouts (sources -> standard -> cpu_int4pack), out= and in place."""

import pytest
import torch

from awq_compile.formats import Packed, SOURCE_FORMATS, convert, from_unpacked, get_format, quantize, to_awq, to_gptq
from awq_compile.formats.convert import in_place_target
from awq_compile.formats.standard import dequantize_standard
from _util import rel_err


def source(fmt, K=256, N=64, G=64, seed=0):
    torch.manual_seed(seed)
    u = quantize(torch.randn(K, N), G, symmetric=fmt.endswith("sym"))
    if fmt == "gptq_v1":
        u.zeros = u.zeros.clamp(max=14)  # a stored 15 would mean 16
    q, qz, s = to_awq(u) if fmt.startswith("awq") else to_gptq(u, v1=fmt == "gptq_v1")
    return u, Packed(fmt, q, qz, s, G)


@pytest.mark.parametrize("fmt", [f.name for f in SOURCE_FORMATS])
def test_every_source_reaches_standard_bit_exactly(fmt):
    u, w = source(fmt)
    std = convert(w, "standard", chunk_bytes=8 * 64)
    ref = from_unpacked(u)
    assert std.layout == "standard"
    assert torch.equal(std.qweight, ref.qweight)
    assert (std.qzeros is None) == (ref.qzeros is None)
    if ref.qzeros is not None:
        assert torch.equal(std.qzeros, ref.qzeros)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("fmt", ["awq", "awq_sym", "gptq_v2"])
def test_cpu_int4pack_is_a_layout_of_formats(fmt, dtype):
    u, w = source(fmt)
    form = convert(w, "cpu_int4pack", dtype=dtype)
    assert form.layout == "cpu_int4pack" and form.scales.dtype == dtype
    x = torch.randn(3, 256, dtype=dtype)
    y = torch._weight_int4pack_mm_for_cpu(x, form.qweight, form.group_size, form.scales)
    assert rel_err(y, x.double() @ u.dequantize(torch.float64)) < (1e-2 if dtype == torch.bfloat16 else 1e-5)


def test_out_buffer_and_in_place():
    u, w = source("awq", K=512, N=64, G=128)
    ref = convert(w, "standard")
    # into a caller's buffer
    out = Packed("standard", torch.empty(64, 64, dtype=torch.int32), torch.empty(4, 8, dtype=torch.int32),
                 w.scales, 128)
    got = convert(w, "standard", out=out)
    assert got.qweight is out.qweight and torch.equal(got.qweight, ref.qweight)
    assert torch.equal(got.qzeros, ref.qzeros)
    # into the source's own memory, 8 rows at a time
    ptr = w.qweight.data_ptr()
    got = convert(w, "standard", out=in_place_target(w), chunk_bytes=8 * 64)
    assert got.qweight.data_ptr() == ptr and torch.equal(got.qweight, ref.qweight)
    assert torch.equal(got.qzeros, ref.qzeros) and got.qzeros.data_ptr() == w.qzeros.data_ptr()
    assert torch.equal(dequantize_standard(got.qweight, got.qzeros, got.scales, 128), u.dequantize())


def test_bad_routes_and_buffers_raise():
    _, w = source("awq")
    with pytest.raises(ValueError, match="no route"):
        convert(w, "gptq_v2")
    with pytest.raises(ValueError, match="matmul dtype"):
        convert(w, "cpu_int4pack")
    with pytest.raises(ValueError, match="out="):
        convert(w, "standard", out=Packed("standard", torch.empty(8, 64, dtype=torch.int32), None, w.scales, 64))
    shifted = Packed("standard", w.qweight.view(-1)[64:].view(31, 64)[:31], w.qzeros, w.scales, 64)
    with pytest.raises(ValueError, match="out="):
        convert(w, "standard", out=shifted)
    with pytest.raises(ValueError, match="K-packed"):
        in_place_target(source("gptq_v2")[1])


def test_k_packed_raw_zeros_are_shared_not_copied():
    _, w = source("gptq_v2")
    std = convert(w, "standard")
    assert std.qweight is w.qweight and std.qzeros is w.qzeros
    _, w1 = source("gptq_v1")
    assert convert(w1, "standard").qzeros is not w1.qzeros  # v1 stores z - 1: derived


def test_source_format_to_standard_is_the_same_route():
    _, w = source("awq")
    assert torch.equal(get_format("awq").to_standard(w.qweight, w.qzeros, w.scales).qweight,
                       convert(w, "standard").qweight)
