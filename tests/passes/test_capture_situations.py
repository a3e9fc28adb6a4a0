"""How the dequant reaches the backend: after a graph break (plain locals), as get_attr constants, in a
first-call graph that re-assigns buffers, in a free function, compiled before the checkpoint is loaded,
and as a whole multi-layer model with fused QKV and gate/up projections in one graph."""

import copy
import math
import warnings

import torch
import torch.nn.functional as F
from expecttest import TestCase
from torch import nn

import awq_compile
from awq_compile.backend import awq_backend
from awq_compile.formats import to_awq
from _spellings import SpelledLinear, Spelling, normalized, random_unpacked, reference
from _util import Capture, normalize_graph, op_count, rel_err

K, N, G = 64, 32, 32


# ------------------------------------------------------------------------------------ AutoAWQ-like
class _Once:
    warned = False


def awq_dequant(qweight, qzeros, scales, group_size):
    """AWQ GEMM dequant in the common pure-PyTorch spelling (shift by 0..28, undo the order, mask)."""
    shifts = torch.arange(0, 32, 4, device=qweight.device)
    q = torch.bitwise_right_shift(qweight[:, :, None], shifts[None, None, :]).to(torch.int8).view(qweight.shape[0], -1)
    z = torch.bitwise_right_shift(qzeros[:, :, None], shifts[None, None, :]).to(torch.int8).view(qzeros.shape[0], -1)
    order = torch.arange(q.shape[1], device=q.device).view(-1, 8)[:, [0, 4, 1, 5, 2, 6, 3, 7]].reshape(-1)
    q, z = q[:, order] & 15, z[:, order] & 15
    return (q - z.repeat_interleave(group_size, 0)) * scales.repeat_interleave(group_size, 0)


class _NaiveMatmul(torch.autograd.Function):
    """Mirrors the shape of AutoAWQ's fallback: the first call warns (a graph break), then dequant + matmul."""

    @staticmethod
    def forward(ctx, x, qweight, qzeros, scales, group_size, bias, out_features):
        out_shape = x.shape[:-1] + (out_features,)
        x = x.to(torch.float16)
        if not _Once.warned:
            warnings.warn("using the naive dequant + matmul path")
            _Once.warned = True
        out = torch.matmul(x, awq_dequant(qweight, qzeros, scales, group_size))
        out = out + bias if bias is not None else out
        return out.reshape(out_shape)

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError


def awq_buffers(K, N, G, seed, symmetric=False):
    u = random_unpacked(K, N, G, symmetric=symmetric, generator=torch.Generator().manual_seed(seed))
    return u, to_awq(u)


def awq_reference(u, x, bias=None):
    w = (u.codes.double() - u.zeros.double().repeat_interleave(u.group_size, 0)) * \
        u.scales.double().repeat_interleave(u.group_size, 0)
    y = x.double() @ w
    return y if bias is None else y + bias.double()


class AutoAwqLike(nn.Module):
    def __init__(self, K, N, G, seed):
        super().__init__()
        self.in_features, self.out_features, self.group_size = K, N, G
        self.u, (qw, qz, s) = awq_buffers(K, N, G, seed)
        self.register_buffer("qweight", qw)
        self.register_buffer("qzeros", qz)
        self.register_buffer("scales", s)
        self.register_buffer("bias", torch.randn(N, generator=torch.Generator().manual_seed(seed)).half())

    def forward(self, x):
        with torch.no_grad():
            return _NaiveMatmul.apply(x, self.qweight, self.qzeros, self.scales, self.group_size, self.bias,
                                      self.out_features)


class TestCaptureSituations(TestCase):
    def test_graph_break_before_the_dequant_resumed_frame_of_locals(self):
        _Once.warned = False
        a, b = AutoAwqLike(K, N, G, seed=1), AutoAwqLike(K, N, G, seed=2)
        cap = Capture()
        x = torch.randn(4, K, dtype=torch.float16)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ca = torch.compile(a, backend=cap)
            ya1, ya2 = ca(x), ca(x)
            yb = torch.compile(b, backend=cap)(x)
        # first call: the function's frame up to the break, the resumed frame holding the dequant (its
        # placeholders are locals with no module path), the module's frame after the apply; second call:
        # the function's frame recompiled whole once the warning flag flipped.
        self.assertEqual([op_count(g) for g in cap.after], [0, 1, 0, 1])
        self.assertExpectedInline(cap.after[1], """\
v0 = awq_compile.w4a16_linear(in3, in0, in1, in2, None, [], '<qweight in forward>', 'awq', 32, 'request:target=cpu;f...', '')
v1 = operator.add(v0, in4)
v2 = .reshape(v1, (4, 32))
return (v2)""")
        for y, m in ((ya1, a), (ya2, a), (yb, b)):
            self.assertLess(rel_err(y, awq_reference(m.u, x, m.bias)), 5e-3)
        self.assertGreater(rel_err(ya1, yb), 0.1)  # b's weights, not a's, through the shared graph

    def test_free_function_on_plain_tensors(self):
        """Tensors that are not module buffers (no static marking) are accepted in the packed roles only."""
        cap = Capture()

        @torch.compile(backend=cap)
        def f(x, qweight, qzeros, scales):
            return x @ awq_dequant(qweight, qzeros, scales, G)

        x = torch.randn(5, K, dtype=torch.float16)
        u1, t1 = awq_buffers(K, N, G, seed=3)
        u2, t2 = awq_buffers(K, N, G, seed=4)
        y1, y2 = f(x, *t1), f(x, *t2)
        self.assertEqual(len(cap.after), 1)
        self.assertExpectedInline(cap.after[0], """\
v0 = awq_compile.w4a16_linear(in3, in0, in1, in2, None, [], '<qweight in f>', 'awq', 32, 'request:target=cpu;f...', '')
return (v0)""")
        self.assertLess(rel_err(y1, awq_reference(u1, x)), 5e-3)
        self.assertLess(rel_err(y2, awq_reference(u2, x)), 5e-3)

    def test_get_attr_form(self):
        """Weights as get_attr constants (Inductor freezing, unlifted exported graphs)."""
        mod = SpelledLinear(normalized(Spelling(bias="add")), K, N, G, bias=torch.randn(N), seed=5)
        x = torch.randn(3, K, dtype=torch.float16)
        seen = {}

        def freezing_backend(gm, example_inputs):
            keep = []
            placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
            for i, (node, value) in enumerate(zip(placeholders, example_inputs)):
                if getattr(value, "_dynamo_static_input_type", None) is None:
                    keep.append(i)
                    continue
                gm.register_buffer(f"frozen_{node.name}", value)
                with gm.graph.inserting_before(node):
                    const = gm.graph.get_attr(f"frozen_{node.name}")
                node.replace_all_uses_with(const)
                gm.graph.erase_node(node)
            gm.recompile()
            seen["before"] = normalize_graph(gm)
            fn = awq_backend(gm, [example_inputs[i] for i in keep], options={"inductor": False})
            seen["after"] = normalize_graph(gm)
            return lambda *args: fn(*[args[i] for i in keep])

        with torch.no_grad():
            y = torch.compile(mod, backend=freezing_backend)(x)
        self.assertIn("get_attr", seen["before"])
        self.assertExpectedInline(seen["after"], """\
v0 = get_attr()
v1 = get_attr()
v2 = get_attr()
v3 = get_attr()
v4 = .reshape(in0, -1, 64)
v5 = awq_compile.w4a16_linear(v4, v1, v2, v0, None, [], 'frozen_l_self_buffer...', 'awq', 32, 'request:target=cpu;f...', '')
v6 = operator.add(v5, v3)
v7 = .reshape(v6, (3, 32))
return (v7)""")
        self.assertLess(rel_err(y, reference(mod, x)), 5e-3)

    def test_first_call_reassigns_its_own_buffers(self):
        """GPTQModel AwqTorchLinear style: scales (and bias) re-cast to the activation dtype and stored back."""

        class RecastOnFirstCall(nn.Module):
            def __init__(self):
                super().__init__()
                self.u, (qw, qz, s) = awq_buffers(K, N, G, seed=6)
                self.register_buffer("qweight", qw)
                self.register_buffer("qzeros", qz)
                self.register_buffer("scales", s)

            def forward(self, x):
                if self.scales.dtype != x.dtype:
                    self.scales = self.scales.to(dtype=x.dtype).contiguous()
                w = awq_dequant(self.qweight, self.qzeros, self.scales, G)
                return torch.matmul(x.reshape(-1, K), w).reshape(*x.shape[:-1], N)

        mod = RecastOnFirstCall()
        x = torch.randn(2, 3, K, dtype=torch.bfloat16)
        cap = Capture()
        compiled = torch.compile(mod, backend=cap)
        with torch.no_grad():
            y1 = compiled(x)
            y2 = compiled(x)
        self.assertEqual(mod.scales.dtype, torch.bfloat16)  # the module's own side effect happened
        self.assertEqual([op_count(g) for g in cap.after], [1, 1])  # recompiled once the buffer changed
        self.assertExpectedInline(cap.after[0], """\
v0 = .to(in0, dtype=torch.bfloat16)
v1 = .contiguous(v0)
v2 = .reshape(in1, -1, 64)
v3 = awq_compile.w4a16_linear(v2, in2, in3, in0, None, [], '<root>', 'awq', 32, 'request:target=cpu;f...', '')
v4 = .reshape(v3, 2, 3, 32)
return (v4, v1)""")
        ref = awq_reference(mod.u, x)
        self.assertLess(rel_err(y1, ref), 2e-2)
        self.assertLess(rel_err(y2, ref), 2e-2)

    def test_compiled_before_the_checkpoint_is_loaded(self):
        """All-zero buffers at compile time verify as every layout; the random probe decides."""
        good = normalized(Spelling())
        wrong = normalized(Spelling(wrong_order=True))
        x = torch.randn(4, K, dtype=torch.float16)
        for sp, rewritten in ((good, True), (wrong, False)):
            torch._dynamo.reset()
            mod = SpelledLinear(sp, K, N, G, seed=7)
            checkpoint = copy.deepcopy(mod.state_dict())
            for t in mod.buffers():
                t.zero_()
            report = awq_compile.explain(mod, x)
            cap = Capture()
            compiled = torch.compile(mod, backend=cap)
            with torch.no_grad():
                compiled(x)
                mod.load_state_dict(checkpoint)
                y = compiled(x)
            self.assertEqual(op_count(cap.after[0]), int(rewritten))
            self.assertLess(rel_err(y, mod(x)), 5e-3)
            if not rewritten:
                self.assertIn("but not of other awq weights", report.skipped[0].reason)
        self.assertExpectedInline(report.skipped[0].reason.split(":")[0], """\
the weight equals the awq dequantisation of the tensors seen at compile time but not of other awq weights, so it is not that dequantisation in general (the example tensors do not pin the computation down, e.g. all-zero buffers of a model compiled before its checkpoint was loaded, while the code computes something else)""")

    def test_k_not_divisible_by_group_size_is_refused(self):
        class Ragged(nn.Module):
            """K=96 with G=64: two scale rows, the second group cut short."""

            def __init__(self):
                super().__init__()
                u = random_unpacked(128, N, 64, symmetric=False, generator=torch.Generator().manual_seed(8))
                qw, qz, s = to_awq(u)
                self.register_buffer("qweight", qw[:96].clone())
                self.register_buffer("qzeros", qz)
                self.register_buffer("scales", s)

            def forward(self, x):
                shifts = torch.arange(0, 32, 4)
                order = torch.arange(N).view(-1, 8)[:, [0, 4, 1, 5, 2, 6, 3, 7]].reshape(-1)
                q = ((self.qweight[:, :, None] >> shifts).view(96, -1)[:, order]) & 15
                z = ((self.qzeros[:, :, None] >> shifts).view(2, -1)[:, order]) & 15
                w = (q - z.repeat_interleave(64, 0)[:96]) * self.scales.repeat_interleave(64, 0)[:96]
                return x @ w

        mod, x = Ragged(), torch.randn(3, 96, dtype=torch.float16)
        report = awq_compile.explain(mod, x)
        self.assertEqual(report.layers, [])
        self.assertExpectedInline(report.skipped[0].reason, """K=96 is not a multiple of the group size G=64: the weight is the awq dequantisation with 2 groups, the last one cut to 32 rows; expected G to divide K (the kernels need whole groups). Pad in_features to 128 (zero codes and zero input features) to use this backend""")
        cap = Capture()
        with torch.no_grad():
            y = torch.compile(mod, backend=cap)(x)
        self.assertEqual(cap.after, cap.before)
        self.assertTrue(torch.equal(y, mod(x)))


# ----------------------------------------------------------------------------- a whole small model
class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        h = x.float()
        return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5) * self.weight.float()).to(x.dtype)


class FusedBlock(nn.Module):
    """Llama-like block with fused projections: qkv_proj [H -> (h + 2 kv) d], gate_up_proj [H -> 2 I]."""

    def __init__(self, linear, hidden=64, heads=4, kv_heads=2, inter=128):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, hidden // heads
        self.norm1, self.norm2 = RMSNorm(hidden), RMSNorm(hidden)
        self.qkv_proj = linear("qkv", hidden, (heads + 2 * kv_heads) * self.hd)
        self.o_proj = linear("o", heads * self.hd, hidden)
        self.gate_up_proj = linear("gate_up", hidden, 2 * inter)
        self.down_proj = linear("down", inter, hidden)

    def forward(self, x):
        B, T, H = x.shape
        q, k, v = self.qkv_proj(self.norm1(x)).split(
            [self.heads * self.hd, self.kv_heads * self.hd, self.kv_heads * self.hd], dim=-1)
        q = q.view(B, T, self.heads, self.hd).transpose(1, 2)
        k = k.view(B, T, self.kv_heads, self.hd).transpose(1, 2).repeat_interleave(self.heads // self.kv_heads, 1)
        v = v.view(B, T, self.kv_heads, self.hd).transpose(1, 2).repeat_interleave(self.heads // self.kv_heads, 1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, H)
        x = x + self.o_proj(a)
        gate, up = self.gate_up_proj(self.norm2(x)).chunk(2, dim=-1)
        return x + self.down_proj(F.silu(gate) * up)


class FusedModel(nn.Module):
    def __init__(self, linear, layers=2, hidden=64):
        super().__init__()
        self.layers = nn.ModuleList([FusedBlock(linear, hidden) for _ in range(layers)])
        self.norm = RMSNorm(hidden)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


SPELLING_OF = {  # a different library style per projection
    "qkv": Spelling(),
    "o": Spelling(fmt="awq_sym", matmul="linear", shift="op"),
    "gate_up": Spelling(fmt="gptq_v2", g_idx="trivial", codes="int64"),
    "down": Spelling(fmt="gptq_v1", group="unflatten", combine="mul_sub", matmul="at_t"),
}


def test_whole_model_with_fused_projections_in_one_graph():
    counter = iter(range(1000))

    def quantized(kind, k, n):
        return SpelledLinear(normalized(SPELLING_OF[kind]), k, n, 32, seed=next(counter))

    model = FusedModel(quantized).half().eval()
    # float64 twin: the same weights, dequantised exactly, in plain nn.Linear layers
    twin_layers = iter([m for m in model.modules() if isinstance(m, SpelledLinear)])

    def exact(kind, k, n):
        src = next(twin_layers)
        lin = nn.Linear(k, n, bias=False)
        eye = torch.eye(k, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(reference(src, eye).t())
        return lin

    twin = FusedModel(exact).double().eval()
    x = torch.randn(2, 5, 64, dtype=torch.float16)
    cap = Capture()
    with torch.no_grad():
        y = torch.compile(model, backend=cap)(x)
        eager = model(x)
        ref = twin(x.double())
    assert len(cap.after) == 1
    assert op_count(cap.after[0]) == 8
    report = awq_compile.explain(model, x)
    assert sorted((lay.name, lay.format) for lay in report.layers) == sorted(
        (f"layers.{i}.{p}_proj", fmt) for i in range(2)
        for p, fmt in (("qkv", "awq"), ("o", "awq_sym"), ("gate_up", "gptq_v2"), ("down", "gptq_v1")))
    assert report.skipped == []  # attention is one sdpa call, not a matmul
    assert rel_err(eager, ref) < 1e-2
    assert rel_err(y, ref) < 1e-2
    assert math.isfinite(float(y.double().norm()))
