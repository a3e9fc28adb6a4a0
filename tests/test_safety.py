"""Safety: bad tensors reaching the op fail loudly and name the layer; one compile serves every batch
size; compiling never mutates the user's model; a shared graph refuses weights it was not verified for."""

import copy
import os
import sys

import pytest
import torch
from torch import nn

import awq_compile
from awq_compile.backend import awq_backend
from awq_compile.runtime.op import w4a16_linear  # noqa: F401  (registers the op)
from awq_compile.models import LlamaConfig, build_demo_model

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "passes"))
from _spellings import SpelledLinear, Spelling, normalized, reference  # noqa: E402
from _util import op_count, rel_err  # noqa: E402

K, N, G = 64, 32, 32


class Counting:
    def __init__(self, **options):
        self.options = {"inductor": False, **options}
        self.graphs = []

    def __call__(self, gm, example_inputs):
        fn = awq_backend(gm, example_inputs, options=self.options)
        self.graphs.append(gm)
        return fn


def spelled(seed=0, **kw):
    sp = normalized(Spelling(**kw))
    bias = torch.randn(N, generator=torch.Generator().manual_seed(seed)) if sp.bias != "none" else None
    return SpelledLinear(sp, K, N, G, bias=bias, seed=seed)


# ------------------------------------------------------------------------------------------ the op
def _op_args(**overrides):
    mod = spelled(seed=1)
    args = dict(x=torch.randn(3, K, dtype=torch.float16), qweight=mod.qweight, qzeros=mod.qzeros,
                scales=mod.scales, bias=None, aux=[], layer="layers.3.mlp.down_proj", fmt="awq",
                group_size=G, plan="*:torch_dequant", aux_digest="")
    args.update(overrides)
    return args


@pytest.mark.parametrize("overrides, message", [
    (dict(x=torch.randn(3, K + 8, dtype=torch.float16)), "activation's last dimension (in_features): expected 64, got (3, 72)"),
    (dict(x=torch.randn(3, K).to(torch.int32)), "activation dtype: expected float16, bfloat16 or float32, got torch.int32"),
    (dict(qweight=torch.zeros(K, N // 8, dtype=torch.int64)), "qweight: expected a 2-D int32 tensor, got torch.int64"),
    (dict(scales=torch.rand(K // G, N + 8, dtype=torch.float16)), "scales: expected float [2, 32], got torch.float16 (2, 40)"),
    (dict(qzeros=None), "qzeros: expected int32 [2, 4], got None"),
    (dict(qzeros=torch.zeros(K // G, N // 4, dtype=torch.int32)), "qzeros: expected int32 [2, 4], got torch.int32 (2, 8)"),
    (dict(bias=torch.rand(N + 1, dtype=torch.float16)), "bias: expected float [32], got torch.float16 (33,)"),
    (dict(group_size=48), "group size: expected a divisor of K=64, got 48"),
    (dict(x=torch.randn(3, K, dtype=torch.float16, device="meta")), "qweight device: expected meta, got cpu"),
])
def test_bad_tensors_reaching_the_op_name_the_layer_and_expected_vs_actual(overrides, message):
    with pytest.raises(ValueError) as e:
        torch.ops.awq_compile.w4a16_linear(**_op_args(**overrides))
    assert "layer 'layers.3.mlp.down_proj'" in str(e.value)
    assert message in str(e.value), str(e.value)


def test_a_shared_graph_refuses_another_instance_whose_reorder_index_differs():
    """The reorder index is an aux tensor: a second instance with another index must not reuse the rewrite."""
    a, b = spelled(seed=2, reorder="buffer"), spelled(seed=3, reorder="buffer")
    b.reorder_idx.copy_(b.reorder_idx.flip(0))
    backend = Counting()
    x = torch.randn(4, K, dtype=torch.float16)
    with torch.no_grad():
        ya = torch.compile(a, backend=backend)(x)
        with pytest.raises(RuntimeError, match="'<root>': an auxiliary tensor of the dequantisation"):
            torch.compile(b, backend=backend)(x)
    assert len(backend.graphs) == 1
    assert rel_err(ya, reference(a, x)) < 5e-3


# ------------------------------------------------------------------------------------ batch sizes
@pytest.mark.parametrize("x3d", ["flat", "3d"])
def test_dynamic_true_one_compile_for_every_batch_size(x3d):
    mod = spelled(seed=4, bias="add", x3d=x3d)
    backend = Counting()
    compiled = torch.compile(mod, backend=backend, dynamic=True)
    with torch.no_grad():
        for M in (7, 64, 300):
            x = torch.randn(M, K, dtype=torch.float16)
            assert rel_err(compiled(x), reference(mod, x)) < 5e-3
        assert len(backend.graphs) == 1
        x = torch.randn(1, K, dtype=torch.float16)
        assert rel_err(compiled(x), reference(mod, x)) < 5e-3
    # M == 1 is specialised by Dynamo itself (0/1 specialisation), not by the backend
    assert len(backend.graphs) <= 2
    assert all(op_count_gm(gm) == 1 for gm in backend.graphs)


def op_count_gm(gm):
    return sum(1 for n in gm.graph.nodes if n.target is torch.ops.awq_compile.w4a16_linear.default)


def test_automatic_dynamic_shapes_recompile_once():
    mod = spelled(seed=5, bias="iadd")
    backend = Counting()
    compiled = torch.compile(mod, backend=backend)
    with torch.no_grad():
        for M in (1, 7, 64, 300):
            x = torch.randn(M, K, dtype=torch.float16)
            assert rel_err(compiled(x), reference(mod, x)) < 5e-3
    assert len(backend.graphs) == 2  # M=1 static, then one dynamic graph for 7, 64 and 300


def test_dynamic_through_inductor_one_compile_including_m_1():
    """With size-oblivious shapes even M=1 shares the graph; Inductor compiles around the op."""
    mod = spelled(seed=6, bias="add", x3d="3d")
    backend = Counting(inductor=True)
    with torch.fx.experimental._config.patch(backed_size_oblivious=True), torch.no_grad():
        compiled = torch.compile(mod, backend=backend, dynamic=True)
        for M in (1, 7, 64, 300):
            x = torch.randn(2, M, K, dtype=torch.float16)
            assert rel_err(compiled(x), reference(mod, x)) < 5e-3
    assert len(backend.graphs) == 1


# ------------------------------------------------------------------------------- model untouched
def _fingerprint(model):
    return {k: (v.clone(), v.dtype, v.device, v.data_ptr(), v.requires_grad) for k, v in model.state_dict().items()}


def _same(before, model):
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k, (t, dtype, device, ptr, grad) in before.items():
        v = after[k]
        assert (v.dtype, v.device, v.data_ptr(), v.requires_grad) == (dtype, device, ptr, grad), k
        assert torch.equal(v, t), k


@pytest.mark.parametrize("kw", [dict(), dict(reorder="buffer", bias="add_"), dict(fmt="gptq_v1", g_idx="trivial"),
                                dict(fmt="awq_sym", recast_scales=True), dict(wrong_order=True)])
def test_compiling_never_mutates_the_model(kw):
    mod = spelled(seed=7, **kw)
    x = torch.randn(2, 3, K, dtype=torch.bfloat16 if mod.sp.recast_scales else torch.float16)
    with torch.no_grad():
        eager_before = mod(x)
    before = _fingerprint(mod)
    awq_compile.explain(mod, x)
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(mod, backend="awq", options={"inductor": False})(x)
        out = torch.compile(mod, backend="awq", options={"inductor": False})(x)
    _same(before, mod)
    with torch.no_grad():
        assert torch.equal(mod(x), eager_before)  # eager still computes what it did
    assert rel_err(out, eager_before) < 2e-2


def test_in_place_ops_inside_the_dequant_do_not_touch_the_buffers():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            src = spelled(seed=8)
            self.src = src
            self.register_buffer("qweight", src.qweight.clone())
            self.register_buffer("qzeros", src.qzeros.clone())
            self.register_buffer("scales", src.scales.clone())

        def forward(self, x):
            shifts = torch.arange(0, 32, 4)
            order = torch.arange(N).view(-1, 8)[:, [0, 4, 1, 5, 2, 6, 3, 7]].reshape(-1)
            q = (self.qweight[:, :, None] >> shifts).view(K, -1)[:, order]
            q &= 15
            z = (self.qzeros[:, :, None] >> shifts).view(K // G, -1)[:, order]
            z.bitwise_and_(15)
            w = (q - z.repeat_interleave(G, 0)).to(self.scales.dtype)
            w.mul_(self.scales.repeat_interleave(G, 0))
            return x @ w

    mod = InPlace()
    before = _fingerprint(mod)
    x = torch.randn(3, K, dtype=torch.float16)
    backend = Counting()
    with torch.no_grad():
        y = torch.compile(mod, backend=backend)(x)
    assert op_count_gm(backend.graphs[0]) == 1
    _same(before, mod)
    assert rel_err(y, reference(mod.src, x)) < 5e-3


def test_whole_demo_model_untouched_by_compile_and_inductor():
    model = build_demo_model(LlamaConfig(vocab_size=64, hidden=64, intermediate=128, layers=1, heads=4,
                                         kv_heads=2, group_size=32), seed=9)
    tokens = torch.randint(0, 64, (1, 5))
    before = _fingerprint(model)
    with torch.no_grad():
        eager = model(tokens)
        out = torch.compile(model, backend="awq")(tokens)
    _same(before, model)
    with torch.no_grad():
        assert torch.equal(model(tokens), eager)
    ref = copy.deepcopy(model).double()(tokens)
    assert rel_err(out, ref) < 1e-2


def test_an_in_place_change_of_the_weight_before_the_matmul_is_not_ignored():
    """``w.mul_(2)`` reads nothing downstream uses, yet changes the weight: never rewrite it away."""

    class Doubled(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = spelled(seed=10)

        def forward(self, x):
            w = self.inner.dequant(torch.float16)
            w.mul_(2)
            return x @ w

    mod = Doubled()
    x = torch.randn(3, K, dtype=torch.float16)
    report = awq_compile.explain(mod, x)
    assert report.layers == [] and "equals no known 4-bit layout" in report.skipped[0].reason
    with torch.no_grad():
        y = torch.compile(mod, backend="awq", options={"inductor": False})(x)
    assert rel_err(y, 2 * reference(mod.inner, x)) < 5e-3
