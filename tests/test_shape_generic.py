"""One forward serving AWQ layers of many shapes (issue 9 item 4).

AutoAWQ / GPTQModel-style layers: a graph break inside every layer's forward, so one code object is
compiled for every layer of the model, with different (K, N, G) and the M of each call.  Under
``awq_compile.shape_generic()`` Dynamo makes those sizes symbolic from the second shape on; our rewrite
must then be shape-generic (no size baked in, the plan chosen per call), so the frame compiles at most
twice and every call runs our op.  Without it, Dynamo's fallback to eager past its recompile limit is
announced in our own log.
"""

import logging

import pytest
import torch
from torch import nn

import awq_compile
import awq_compile.runtime.op as op_module
from awq_compile.backend import awq_backend
from awq_compile.models.awq_linear import AwqLinear, dequantize_awq

from _util import rel_err

# (K, N, G): every size differs between the first two layers (Dynamo makes a size symbolic when it
# first sees it change), no size is 1 (Dynamo specialises 0 and 1: M = 1 would be one more graph)
SHAPES = [(64, 32, 32), (384, 96, 64), (64, 96, 32), (192, 32, 64), (128, 128, 32), (256, 64, 64),
          (64, 160, 16), (320, 32, 64), (128, 192, 32), (192, 96, 32), (256, 128, 128), (512, 224, 64)]
MS = (2, 5, 16, 3)


class BreakingAwq(AwqLinear):
    """AwqLinear with a graph break first, as AutoAWQ's layers have: each layer is its own frame."""

    def forward(self, x):
        x = x * 1.0
        torch._dynamo.graph_break()
        return super().forward(x)


def _layers():
    torch.manual_seed(0)
    return [BreakingAwq.from_float(nn.Linear(k, n, bias=True), group_size=g, dtype=torch.float32)
            for i, (k, n, g) in enumerate(SHAPES)]


def _reference(layer, x):
    w = dequantize_awq(layer.qweight, layer.qzeros, layer.scales.double(), layer.group_size)
    out = x.double() @ w
    return out if layer.bias is None else out + layer.bias.double()


class Counting:
    def __init__(self, **options):
        self.options, self.with_op = options, 0

    def __call__(self, gm, example_inputs):
        fn = awq_backend(gm, example_inputs, options=self.options)
        self.with_op += "w4a16_linear" in gm.code
        return fn


@pytest.fixture
def op_calls(monkeypatch):
    calls = []
    real = op_module.runner_for

    def counted(resolved, M):
        calls.append((M, resolved.plan.entry_for(M).kernel))
        return real(resolved, M)

    monkeypatch.setattr(op_module, "runner_for", counted)
    return calls


@pytest.mark.parametrize("inductor", [False, True])
@pytest.mark.parametrize("dynamic", [None, True])
def test_a_dozen_layer_shapes_share_one_forward_compiled_at_most_twice(op_calls, inductor, dynamic):
    layers = _layers()
    backend = Counting(inductor=inductor)
    compiled = [torch.compile(layer, backend=backend, dynamic=dynamic) for layer in layers]
    calls = 0
    with awq_compile.shape_generic(), torch.no_grad():
        for rnd in range(2 if inductor else len(MS)):
            for i, (layer, fn) in enumerate(zip(layers, compiled)):
                M = MS[(i + rnd) % len(MS)]
                x = torch.randn(M, layer.in_features)
                out = fn(x)
                calls += 1
                assert out.shape == (M, layer.out_features)
                assert rel_err(out, _reference(layer, x)) < 1e-5, (i, M)
    assert backend.with_op <= 2, f"{backend.with_op} graphs compiled for the shared forward"
    assert len(op_calls) == calls, "some calls did not run our op (eager fallback or a skipped rewrite)"


def test_fallback_to_eager_is_announced_once_in_our_log(caplog):
    layers = _layers()[:6]
    backend = Counting(inductor=False)
    with torch._dynamo.config.patch(recompile_limit=2), torch.no_grad(), \
            caplog.at_level(logging.WARNING, logger="awq_compile"):
        for layer in layers + layers:
            torch.compile(layer, backend=backend)(torch.randn(2, layer.in_features))
    ours = [r for r in caplog.records if r.name == "awq_compile" and r.levelno == logging.WARNING]
    assert len(ours) == 1, [r.getMessage() for r in ours]
    text = ours[0].getMessage()
    assert "runs it eagerly" in text and "awq_compile.shape_generic()" in text and "recompile_limit" in text
