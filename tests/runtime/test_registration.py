"""The forward ops' registration (runtime/registration.py): the Autograd kernel calls the implementation
directly only where the dispatcher would have; modes, tracing and fake tensors still see the op."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import awq_compile.runtime.op  # noqa: F401
from awq_compile.formats import quantize, to_awq
from _util import rel_err

op = torch.ops.awq_compile.w4a16_linear
PLAN = "*:torch_dequant"


def _layer():
    u = quantize(torch.randn(128, 32), 32)
    u.scales = u.scales.to(torch.float16)
    return u, to_awq(u)


class _Seen(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_a_dispatch_mode_sees_the_op_and_gets_the_same_result():
    u, (q, z, s) = _layer()
    x = torch.randn(3, 128, dtype=torch.float16)
    plain = op(x, q, z, s, None, [], "t", "awq", 32, PLAN, "")
    with _Seen() as seen:
        moded = op(x, q, z, s, None, [], "t", "awq", 32, PLAN, "")
    assert "awq_compile.w4a16_linear.default" in seen.ops
    assert torch.equal(plain, moded)


def test_make_fx_records_one_op_node_and_fake_tensors_get_the_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    u, (q, z, s) = _layer()
    x = torch.randn(3, 128, dtype=torch.float16)
    gm = make_fx(lambda x, q, z, s: op(x, q, z, s, None, [], "t", "awq", 32, PLAN, ""))(x, q, z, s)
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets == [op.default], targets
    with FakeTensorMode() as mode:
        fx_, fq, fz, fs = (mode.from_tensor(t) for t in (x, q, z, s))
        y = op(fx_, fq, fz, fs, None, [], "t", "awq", 32, PLAN, "")
    assert y.shape == (3, 32) and y.dtype == torch.float16


def test_gradients_flow_to_x_scales_and_bias_through_the_autograd_function():
    u, (q, z, s) = _layer()
    x = torch.randn(2, 128, dtype=torch.float32, requires_grad=True)
    s32 = s.float().requires_grad_()
    b = torch.randn(32, requires_grad=True)
    y = op(x, q, z, s32, b, [], "t", "awq", 32, PLAN, "")
    assert y.grad_fn is not None
    y.square().sum().backward()
    w = u.dequantize(torch.float64)
    g = 2 * (x.double() @ w + b.double())
    assert rel_err(x.grad, g @ w.t()) < 1e-4
    assert rel_err(b.grad, g.sum(0)) < 1e-4
    codes = (w / u.scales.double().repeat_interleave(32, 0))
    assert rel_err(s32.grad, (codes * (x.double().t() @ g)).view(4, 32, 32).sum(1)) < 1e-4
