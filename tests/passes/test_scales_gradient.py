"""Scales that require grad: the gradient the compiled layer gives them is the one eager defines."""

import pytest
import torch

from awq_compile.formats import quantize, to_awq
from awq_compile.models.awq_linear import dequantize_awq
from _util import Capture, op_count, rel_err


class Trainable(torch.nn.Module):
    def __init__(self, spelling):
        super().__init__()
        torch.manual_seed(0)
        q, qz, s = to_awq(quantize(torch.randn(256, 64), 64))
        self.register_buffer("qweight", q)
        self.register_buffer("qzeros", qz)
        self.scales = torch.nn.Parameter(s.float())
        self.spelling = spelling

    def forward(self, x):
        if self.spelling == "plain":
            return x @ dequantize_awq(self.qweight, self.qzeros, self.scales, 64)
        if self.spelling == "detach":
            return x @ dequantize_awq(self.qweight, self.qzeros, self.scales.detach(), 64)
        if self.spelling == "no_grad":
            with torch.no_grad():
                w = dequantize_awq(self.qweight, self.qzeros, self.scales, 64)
            return x @ w
        # same values, twice the gradient: s + (s - s.detach())
        return x @ dequantize_awq(self.qweight, self.qzeros, 2 * self.scales - self.scales.detach(), 64)


@pytest.mark.parametrize("spelling", ["plain", "detach", "no_grad"])
def test_scales_gradient_is_what_eager_gives(spelling):
    torch._dynamo.reset()
    eager, model = Trainable(spelling), Trainable(spelling)
    x = torch.randn(5, 256)
    g = torch.randn(5, 64)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    (eager(xe) * g).sum().backward()
    cap = Capture()
    (torch.compile(model, backend=cap)(xc) * g).sum().backward()
    assert op_count(cap.after[0]) == 1
    assert (model.scales.grad is None) == (eager.scales.grad is None), spelling
    if eager.scales.grad is not None:
        assert rel_err(model.scales.grad, eager.scales.grad) < 1e-5
    assert rel_err(xc.grad, xe.grad) < 1e-5


def test_a_gradient_other_than_ours_leaves_the_layer_alone():
    torch._dynamo.reset()
    eager, model = Trainable("other"), Trainable("other")
    x = torch.randn(5, 256)
    eager(x).sum().backward()
    cap = Capture()
    torch.compile(model, backend=cap)(x).sum().backward()
    assert op_count(cap.after[0]) == 0  # left as written ...
    assert rel_err(model.scales.grad, eager.scales.grad) < 1e-6  # ... so training sees the code's gradient


def test_the_refusal_names_the_gradient(caplog):
    import logging

    torch._dynamo.reset()
    with caplog.at_level(logging.INFO, logger="awq_compile"):
        torch.compile(Trainable("other"), backend=Capture())(torch.randn(5, 256))
    assert any("is not that of (q - z) * s" in r.getMessage() for r in caplog.records)
