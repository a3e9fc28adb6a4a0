"""Merged projections: AWQ linears reading one input become one launch over the concatenated N."""

from __future__ import annotations

import copy

import pytest
import torch
from expecttest import TestCase
from torch import nn

import awq_compile
from awq_compile.models.awq_linear import AwqLinear, dequantize_awq
from awq_compile.runtime.weights import weight_cache
from _util import Capture, rel_err

K, G = 128, 32


def _awq(N, bias, seed):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(K, N, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(N, K, generator=g) / K ** 0.5)
        if bias:
            lin.bias.copy_(torch.randn(N, generator=g))
    return AwqLinear.from_float(lin, G).eval()


class Block(nn.Module):
    """q/k/v read one normalised input; gate/up read another value computed from q/k/v."""

    def __init__(self, bias=False, seed=0):
        super().__init__()
        self.q, self.k, self.v = _awq(64, bias, seed), _awq(32, bias, seed + 1), _awq(32, bias, seed + 2)
        self.gate, self.up = _awq(96, False, seed + 3), _awq(96, False, seed + 4)

    def forward(self, x):
        h = torch.nn.functional.layer_norm(x, (K,))
        q, k, v = self.q(h), self.k(h), self.v(h)
        a = (q[..., :32] * k + v).repeat(1, 1, 4)            # [.., 128]
        m = torch.nn.functional.silu(self.gate(a)) * self.up(a)
        return q.view(*q.shape[:-1], 4, 16).sum(-1), m


def _ref(model, x):
    return copy.deepcopy(model).double()(x.double())


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("inductor", [False, True], ids=["fx", "inductor"])
def test_qkv_and_gate_up_run_as_two_launches_and_match_float64(bias, inductor):
    torch.manual_seed(0)
    model = Block(bias)
    capture = Capture(inductor=inductor)
    x = torch.randn(2, 3, K, dtype=torch.float16)
    with torch.no_grad():
        outs = torch.compile(model, backend=capture)(x)
    after = capture.after[0]
    assert after.count("awq_compile.w4a16_linear_merged(") == 2, after
    assert after.count("awq_compile.w4a16_linear(") == 0, after
    for out, ref in zip(outs, _ref(model, x)):
        assert rel_err(out, ref) < 2e-3


class MergedGraphSnapshot(TestCase):
    def test_merged_graph(self):
        # ours from the merged op to each part's slice; the parts' own casts and reshapes of x stay (dead)
        capture = Capture()
        with torch.no_grad():
            torch.compile(Block(bias=True), backend=capture)(torch.randn(4, K, dtype=torch.float16))
        self.assertExpectedInline(capture.after[0], """\
v0 = F.layer_norm(in0, (128,))
v1 = .to(v0, torch.float16)
v2 = .reshape(v1, -1, 128)
v3 = awq_compile.w4a16_linear_merged(v2, [in2, in6, in10], [in3, in7, in11], [in1, in5, in9], None, 'q;k;v', 'awq', 32, 'request:target=cpu;f...')
v4 = .narrow(v3, -1, 0, 64)
v5 = .contiguous(v4)
v6 = operator.add(v5, in4)
v7 = .reshape(v6, (4, 64))
v8 = .to(v7, torch.float16)
v9 = .to(v0, torch.float16)
v10 = .reshape(v9, -1, 128)
v11 = .narrow(v3, -1, 64, 32)
v12 = .contiguous(v11)
v13 = operator.add(v12, in8)
v14 = .reshape(v13, (4, 32))
v15 = .to(v14, torch.float16)
v16 = .to(v0, torch.float16)
v17 = .reshape(v16, -1, 128)
v18 = .narrow(v3, -1, 96, 32)
v19 = .contiguous(v18)
v20 = operator.add(v19, in12)
v21 = .reshape(v20, (4, 32))
v22 = .to(v21, torch.float16)
v23 = getitem(v8, (Ellipsis, None:32:None))
v24 = operator.mul(v23, v15)
v25 = operator.add(v24, v22)
v26 = .repeat(v25, 1, 1, 4)
v27 = .to(v26, torch.float16)
v28 = .reshape(v27, -1, 128)
v29 = awq_compile.w4a16_linear_merged(v28, [in14, in17], [in15, in18], [in13, in16], None, 'gate;up', 'awq', 32, 'request:target=cpu;f...')
v30 = .narrow(v29, -1, 0, 96)
v31 = .contiguous(v30)
v32 = .reshape(v31, (1, 4, 96))
v33 = .to(v32, torch.float16)
v34 = F.silu(v33)
v35 = .to(v26, torch.float16)
v36 = .reshape(v35, -1, 128)
v37 = .narrow(v29, -1, 96, 96)
v38 = .contiguous(v37)
v39 = .reshape(v38, (1, 4, 96))
v40 = .to(v39, torch.float16)
v41 = operator.mul(v34, v40)
v42 = .view(v8, 4, 4, 16)
v43 = .sum(v42, -1)
return (v43, v41)""")


def test_explain_shows_one_merged_layer_naming_its_parts():
    report = awq_compile.explain(Block(), torch.randn(2, K, dtype=torch.float16))
    assert len(report.layers) == 5
    names = {g.name: g for g in report.merged}
    assert set(names) == {"q+k+v", "gate+up"}, names
    assert names["q+k+v"].parts == ("q", "k", "v") and names["q+k+v"].out_features == 128
    assert "merged (one launch each" in str(report) and "q+k+v [128 -> 128]" in str(report)


def test_second_instance_and_in_place_reload_get_their_own_merged_weights():
    a, b = Block(seed=10), Block(seed=20)
    x = torch.randn(3, K, dtype=torch.float16)
    with torch.no_grad():
        ca, cb = torch.compile(a, backend="awq"), torch.compile(b, backend="awq")
        ca(x)
        for out, ref in zip(cb(x), _ref(b, x)):       # same graph, b's weights
            assert rel_err(out, ref) < 2e-3
        a.load_state_dict(Block(seed=30).state_dict())  # in place: versions bump, the merged entry is stale
        for out, ref in zip(ca(x), _ref(a, x)):
            assert rel_err(out, ref) < 2e-3


class DifferentInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k = _awq(64, False, 1), _awq(64, False, 2)

    def forward(self, x, y):
        return self.q(x) + self.k(y)


class WriteBetween(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k = _awq(64, False, 1), _awq(64, False, 2)

    def forward(self, x):
        a = self.q(x)
        x.mul_(2)                     # k reads the modified input
        return a + self.k(x)


def test_inputs_that_differ_are_left_separate():
    model = DifferentInputs()
    capture = Capture()
    x, y = torch.randn(2, K, dtype=torch.float16), torch.randn(2, K, dtype=torch.float16)
    with torch.no_grad():
        out = torch.compile(model, backend=capture)(x, y)
    assert "merged" not in capture.after[0] and capture.after[0].count("w4a16_linear(") == 2
    assert rel_err(out, copy.deepcopy(model).double()(x.double(), y.double())) < 2e-3


def test_a_write_to_the_shared_input_between_the_layers_keeps_them_separate():
    model = WriteBetween()
    capture = Capture()
    x = torch.randn(2, K, dtype=torch.float16)
    ref = copy.deepcopy(model).double()(x.double().clone())
    with torch.no_grad():
        out = torch.compile(model, backend=capture)(x.clone())
    assert "merged" not in capture.after[0]
    assert rel_err(out, ref) < 2e-3


def test_options_turn_merging_off_and_reuse_weight_memory_never_merges():
    for options in ({"merge_projections": False}, {"reuse_weight_memory": True}):
        model = Block()
        capture = Capture(**options)
        with torch.no_grad():
            torch.compile(model, backend=capture)(torch.randn(2, K, dtype=torch.float16))
        assert "merged" not in capture.after[0] and capture.after[0].count("w4a16_linear(") == 5, options


class GradQKV(nn.Module):
    """The dequant + matmul outside no_grad, so the input gets a gradient (fine-tuning through AWQ)."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = _awq(64, True, 1), _awq(32, True, 2), _awq(32, True, 3)

    def forward(self, x):
        outs = []
        for lin in (self.q, self.k, self.v):
            w = dequantize_awq(lin.qweight, lin.qzeros, lin.scales, lin.group_size)
            outs.append(torch.nn.functional.linear(x, w.t().to(x.dtype), lin.bias.to(x.dtype)))
        return outs


def test_input_gradient_through_the_merged_op():
    model = GradQKV().float()
    x = torch.randn(2, K, dtype=torch.float32)
    xe = x.clone().requires_grad_()
    sum((o * (i + 1)).sum() for i, o in enumerate(model(xe))).backward()
    xc = x.clone().requires_grad_()
    capture = Capture()
    sum((o * (i + 1)).sum() for i, o in enumerate(torch.compile(model, backend=capture)(xc))).backward()
    assert "w4a16_linear_merged" in capture.after[0], capture.after[0]
    assert rel_err(xc.grad, xe.grad) < 1e-4


def test_merged_weights_die_with_their_model():
    cache = weight_cache()
    model = Block()
    with torch.no_grad():
        torch.compile(model, backend="awq", options={"inductor": False})(torch.randn(2, K, dtype=torch.float16))
    before = cache.nbytes()
    assert before > 0
    del model
    torch._dynamo.reset()
    import gc
    gc.collect()
    assert cache.nbytes() < before
