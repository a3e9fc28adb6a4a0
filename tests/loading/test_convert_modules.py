"""convert_modules: other libraries' 4-bit linears become ours, sharing their tensors, same numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _writers import pack_awq_rows, pack_seq_cols, pack_seq_rows, quantise  # noqa: E402

import awq_compile
from awq_compile.models import AwqLinear, GptqLinear


class WQLinear_GEMM(nn.Module):  # noqa: N801 - AutoAWQ's class name and buffers (awq/modules/linear/gemm.py)
    def __init__(self, w_nk, G, bias):
        super().__init__()
        N, K = w_nk.shape
        self.in_features, self.out_features, self.w_bit, self.group_size = K, N, 4, G
        codes, zeros, scales = quantise(w_nk, G, symmetric=False)
        self.register_buffer("qweight", pack_awq_rows(codes))
        self.register_buffer("qzeros", pack_awq_rows(zeros))
        self.register_buffer("scales", scales)
        self.register_buffer("bias", bias)
        self.ref = ((codes.double() - zeros.double().repeat_interleave(G, 0))
                    * scales.double().repeat_interleave(G, 0))

    def forward(self, x):  # AutoAWQ would call its Triton kernel here
        raise TypeError("the library kernel is not available here")


class TorchLinear(nn.Module):  # GPTQModel's GPTQ torch kernel class: v2 zeros in memory, g_idx sorted
    def __init__(self, w_nk, G, bias, act_order=False):
        super().__init__()
        N, K = w_nk.shape
        self.in_features, self.out_features, self.bits, self.group_size = K, N, 4, G
        codes, zeros, scales = quantise(w_nk, G, symmetric=False)
        self.register_buffer("qweight", pack_seq_rows(codes))
        self.register_buffer("qzeros", pack_seq_cols(zeros))
        self.register_buffer("scales", scales)
        g = torch.arange(K, dtype=torch.int32) // G
        self.register_buffer("g_idx", g.flip(0).contiguous() if act_order else g)
        self.register_buffer("bias", bias)
        self.ref = ((codes.double() - zeros.double().repeat_interleave(G, 0))
                    * scales.double().repeat_interleave(G, 0))

    def forward(self, x):
        raise TypeError("graph-breaking library code")


class Block(nn.Module):
    def __init__(self, cls, **kw):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = cls(torch.randn(128, 64, generator=g) * 0.1, 32, (torch.randn(128, generator=g) * 0.1).half(), **kw)
        self.b = cls(torch.randn(64, 128, generator=g) * 0.1, 32, None, **kw)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))

    def reference(self, x):
        h = torch.relu(x.double() @ self.a.ref + self.a.bias.double())
        return h @ self.b.ref


@pytest.mark.parametrize("cls,new", [(WQLinear_GEMM, AwqLinear), (TorchLinear, GptqLinear)])
def test_library_modules_become_ours(cls, new):
    m = Block(cls)
    qweight = m.a.qweight
    ref_x = torch.randn(3, 5, 64)
    expect = m.reference(ref_x)
    report = awq_compile.convert_modules(m)
    assert report == {"a": new.__name__, "b": new.__name__}
    assert type(m.a) is new and m.a.qweight is qweight   # tensors shared, not copied
    with torch.no_grad():
        out = m(ref_x.half())
        compiled = torch.compile(m, backend="awq")(ref_x.half())
    for y in (out, compiled):
        assert float((y.double() - expect).norm() / expect.norm()) < 5e-3


def test_act_order_left_alone():
    m = Block(TorchLinear, act_order=True)
    report = awq_compile.convert_modules(m)
    assert report["a"].startswith("left alone: act-order")
    assert type(m.a) is TorchLinear


def test_compressed_tensors_modules_in_memory():
    """A model compressed in memory by compressed-tensors (its decompression would run in forward)."""
    pytest.importorskip("compressed_tensors")
    from _writers import float_model, tiny_config, write_ct

    import tempfile

    cfg = tiny_config("llama")
    model = float_model(cfg)
    with tempfile.TemporaryDirectory() as d:
        deq = write_ct(d, model, 32, symmetric=False)       # leaves `model` compressed in memory
    ref = float_model(cfg).double()
    sd = {k: v.half().double() for k, v in ref.state_dict().items()}
    sd.update({f"{k}.weight": w for k, w in deq.items()})
    ref.load_state_dict(sd)
    report = awq_compile.convert_modules(model)
    assert len(report) == 14 and set(report.values()) == {"GptqLinear"}
    for hook in list(model._forward_pre_hooks):   # compressed-tensors' decompress-on-first-forward hook
        model._forward_pre_hooks.pop(hook)
    ids = torch.randint(3, 96, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model.float()(ids).logits.double()
        r = ref(ids).logits
    assert float((out - r).norm() / r.norm()) < 1e-3
