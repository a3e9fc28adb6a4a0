"""The matching passes on Dynamo graphs: what is rewritten, what is left alone, and why."""

import pytest
import torch
from expecttest import TestCase
from torch import nn

import awq_compile
from awq_compile.models import AwqLinear
from _util import Capture, op_count, rel_err


def awq_linear(K, N, G, bias=False, dtype=torch.float16):
    lin = nn.Linear(K, N, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(N, K) / K ** 0.5)
        if bias:
            lin.bias.copy_(torch.randn(N))
    return AwqLinear.from_float(lin, G, dtype).eval()


def reference(mod: AwqLinear, x):
    """float64 reference: the same module with float64 scales computes the dequant exactly."""
    import copy

    m64 = copy.deepcopy(mod).double()
    return m64(x.double())


def compile_capture(mod, x, **options):
    cap = Capture(**options)
    out = torch.compile(mod, backend=cap)(x)
    return cap, out


@pytest.mark.parametrize("G", [32, 64, 128, "K"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(5,), (2, 3)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autoawq_style_linear_is_rewritten(G, bias, shape, dtype):
    K, N = 256, 48
    mod = awq_linear(K, N, K if G == "K" else G, bias, dtype)
    x = torch.randn(*shape, K, dtype=dtype)
    cap, out = compile_capture(mod, x)
    assert op_count(cap.after[0]) == 1, cap.after[0]
    assert "bitwise_right_shift" not in cap.after[0]  # the dequant is gone
    assert out.shape == (*shape, N) and out.dtype == dtype
    assert rel_err(out, reference(mod, x)) < 1e-2


class TestGraphSnapshots(TestCase):
    def test_before_and_after(self):
        mod = awq_linear(64, 32, 32, bias=True)
        cap, _ = compile_capture(mod, torch.randn(4, 64, dtype=torch.float16))
        self.assertExpectedInline(cap.before[0], """\
v0 = .to(in0, torch.float16)
set_grad_enabled(False)
v2 = torch.arange(0, 32, 4)
v3 = getitem(in2, (:, :, None))
v4 = getitem(v2, (None, None, :))
v5 = torch.bitwise_right_shift(v3, v4)
v6 = .to(v5, torch.int8)
v7 = .view(v6, 64, -1)
v8 = getitem(in3, (:, :, None))
v9 = getitem(v2, (None, None, :))
v10 = torch.bitwise_right_shift(v8, v9)
v11 = .to(v10, torch.int8)
v12 = .view(v11, 2, -1)
v13 = torch.arange(32, dtype=torch.int32)
v14 = .view(v13, -1, 8)
v15 = getitem(v14, (:, [0, 4, 1, 5, 2, 6, 3, 7]))
v16 = .view(v15, -1)
v17 = getitem(v7, (:, v16))
v18 = torch.bitwise_and(v17, 15)
v19 = getitem(v12, (:, v16))
v20 = torch.bitwise_and(v19, 15)
v21 = .repeat_interleave(v20, 32, dim=0)
v22 = .repeat_interleave(in1, 32, dim=0)
v23 = operator.sub(v18, v21)
v24 = operator.mul(v23, v22)
v25 = .reshape(v0, -1, 64)
v26 = torch.matmul(v25, v24)
set_grad_enabled(True)
v28 = operator.add(v26, in4)
v29 = .reshape(v28, (4, 32))
v30 = .to(v29, torch.float16)
return (v30)""")
        self.assertExpectedInline(cap.after[0], """\
v0 = .to(in0, torch.float16)
set_grad_enabled(False)
v2 = .reshape(v0, -1, 64)
v3 = awq_compile.w4a16_linear(v2, in2, in3, in1, None, [], '<root>', 'awq', 32, 'request:target=cpu;f...', '')
set_grad_enabled(True)
v5 = operator.add(v3, in4)
v6 = .reshape(v5, (4, 32))
v7 = .to(v6, torch.float16)
return (v7)""")


class Int8WeightOnly(nn.Module):
    def __init__(self, K, N):
        super().__init__()
        self.register_buffer("w8", torch.randint(-127, 127, (N, K), dtype=torch.int8))
        self.register_buffer("scale", torch.rand(N, 1, dtype=torch.float16) / 100)

    def forward(self, x):
        return torch.nn.functional.linear(x, self.w8.to(x.dtype) * self.scale)


class RuntimeScaled(nn.Module):
    """The weight depends on the input: never a constant, never rewritten."""

    def __init__(self):
        super().__init__()
        self.inner = awq_linear(64, 32, 32)

    def forward(self, x):
        w = awq_compile.models.dequantize_awq(self.inner.qweight, self.inner.qzeros, self.inner.scales, 32)
        return x @ (w * x.mean())


@pytest.mark.parametrize("make, reason", [
    (lambda: nn.Linear(64, 32).half(), "not quantized: the weight is a plain float16 tensor"),
    (lambda: Int8WeightOnly(64, 32), "not quantized: the weight is computed from float16, int8 tensors"),
    (lambda: RuntimeScaled(), "depends on the runtime input"),
])
def test_non_awq_matmuls_are_untouched_with_a_reason(make, reason):
    mod = make()
    x = torch.randn(4, 64, dtype=torch.float16)
    cap, out = compile_capture(mod, x)
    assert op_count(cap.after[0]) == 0
    assert cap.before[0] == cap.after[0]
    report = awq_compile.explain(mod, x)
    assert report.layers == []
    assert len(report.skipped) == 1 and reason in report.skipped[0].reason, report.skipped
    assert torch.equal(out, mod(x))


def test_strict_raises_on_a_quantized_looking_refusal():
    class WrongOrder(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = awq_linear(64, 32, 32)

        def forward(self, x):
            m = self.inner
            shifts = torch.arange(0, 32, 4)
            q = ((m.qweight[:, :, None] >> shifts) & 15).view(64, -1)  # no AWQ reorder
            z = ((m.qzeros[:, :, None] >> shifts) & 15).view(2, -1)
            w = (q - z.repeat_interleave(32, 0)) * m.scales.repeat_interleave(32, 0)
            return x @ w

    mod, x = WrongOrder(), torch.randn(4, 64, dtype=torch.float16)
    report = awq_compile.explain(mod, x)
    assert not report.layers and "equals no known 4-bit layout" in report.skipped[0].reason
    torch._dynamo.reset()
    with pytest.raises(Exception, match="strict"):
        torch.compile(mod, backend="awq", options={"strict": True, "inductor": False})(x)
