"""The custom op: numerics of the CPU paths, input validation, fake tensors, the weight cache."""

import gc

import pytest
import torch

import awq_compile.runtime.op  # noqa: F401  registers torch.ops.awq_compile
from awq_compile.formats import quantize, to_awq, to_gptq
from awq_compile.kernels.registry import select
from awq_compile.kernels.problem import Problem
from awq_compile.runtime.weights import WeightCache, weight_cache
from awq_compile.target import Target
from _util import rel_err

op = torch.ops.awq_compile.w4a16_linear


def make(K=256, N=64, G=64, dtype=torch.float16, symmetric=False, fmt="awq"):
    u = quantize(torch.randn(K, N), G, symmetric=symmetric)
    u.scales = u.scales.to(dtype)
    packed = to_awq(u) if fmt.startswith("awq") else to_gptq(u)
    return u, packed


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kernel", ["cpu_int4pack", "torch_dequant"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_cpu_paths_match_float64(dtype, kernel, symmetric):
    fmt = "awq_sym" if symmetric else "awq"
    u, (q, qz, s) = make(dtype=dtype, symmetric=symmetric)
    x = torch.randn(2, 5, 256, dtype=dtype)
    bias = torch.randn(64, dtype=dtype)
    y = op(x, q, qz, s, bias, [], "t", fmt, 64, f"*:{kernel}", "")
    ref = x.double() @ u.dequantize(torch.float64) + bias.double()
    assert y.shape == (2, 5, 64) and y.dtype == dtype
    assert rel_err(y, ref) < (1e-2 if dtype == torch.bfloat16 else 2e-3)


def test_plan_for_gpu_target_runs_on_cpu_tensors_replanned_with_a_warning(caplog):
    import logging

    u, (q, qz, s) = make()
    plan = select(Problem(256, 64, 64, True, "float16"), Target.parse("hip:gfx942")).encode()
    x = torch.randn(3, 256, dtype=torch.float16)
    with caplog.at_level(logging.WARNING, logger="awq_compile"):
        for _ in range(2):
            y = op(x, q, qz, s, None, [], "layers.7.q_proj", "awq", 64, plan, "")
            assert rel_err(y, x.double() @ u.dequantize(torch.float64)) < 2e-3
    msgs = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "layers.7.q_proj" in r.getMessage()]
    assert len(msgs) == 1 and "made for hip:gfx942" in msgs[0] and "re-planned for cpu" in msgs[0]


def test_gptq_source_layout():
    u, (q, qz, s) = make(fmt="gptq_v2")
    x = torch.randn(4, 256, dtype=torch.float16)
    y = op(x, q, qz, s, None, [], "t", "gptq_v2", 64, "*:torch_dequant", "")
    assert rel_err(y, x.double() @ u.dequantize(torch.float64)) < 2e-3


def test_empty_batch():
    u, (q, qz, s) = make()
    y = op(torch.randn(0, 256, dtype=torch.float16), q, qz, s, None, [], "t", "awq", 64, "*:torch_dequant", "")
    assert y.shape == (0, 64)


@pytest.mark.parametrize("mutate, message", [
    (lambda a: a.update(x=torch.randn(3, 128, dtype=torch.float16)), "in_features.*expected 256"),
    (lambda a: a.update(x=torch.randn(3, 256).to(torch.int32)), "activation dtype"),
    (lambda a: a.update(qweight=a["qweight"].to(torch.int64)), "qweight"),
    (lambda a: a.update(scales=a["scales"][:, :32]), r"scales: expected float \[4, 64\]"),
    (lambda a: a.update(qzeros=a["qzeros"][:2]), "qzeros"),
    (lambda a: a.update(qzeros=None), "qzeros"),
    (lambda a: a.update(bias=torch.randn(65, dtype=torch.float16)), "bias"),
    (lambda a: a.update(group_size=48), "group size"),
])
def test_bad_inputs_raise_naming_the_layer(mutate, message):
    u, (q, qz, s) = make()
    args = dict(x=torch.randn(3, 256, dtype=torch.float16), qweight=q, qzeros=qz, scales=s, bias=None,
                group_size=64)
    mutate(args)
    with pytest.raises(ValueError, match="layer 'model.layers.3.mlp.up_proj'.*" + message):
        op(args["x"], args["qweight"], args["qzeros"], args["scales"], args["bias"], [],
           "model.layers.3.mlp.up_proj", "awq", args["group_size"], "*:torch_dequant", "")


def test_fake_tensor_shapes_and_errors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    u, (q, qz, s) = make()
    with FakeTensorMode() as mode:
        fx = torch.empty(7, 3, 256, dtype=torch.float16)
        fq, fz, fs = (mode.from_tensor(t) for t in (q, qz, s))
        y = op(fx, fq, fz, fs, None, [], "t", "awq", 64, "*:torch_dequant", "")
        assert y.shape == (7, 3, 64) and y.dtype == torch.float16
        with pytest.raises(ValueError, match="layer 't'"):
            op(torch.empty(7, 128, dtype=torch.float16), fq, fz, fs, None, [], "t", "awq", 64, "*:torch_dequant", "")


def test_backward_through_the_op():
    u, (q, qz, s) = make(dtype=torch.float32)
    x = torch.randn(4, 256, requires_grad=True)
    y = op(x, q, qz, s, None, [], "t", "awq", 64, "*:torch_dequant", "")
    y.sum().backward()
    ref = torch.ones(4, 64, dtype=torch.float64) @ u.dequantize(torch.float64).t()
    assert rel_err(x.grad, ref) < 1e-5


class TestWeightCache:
    def test_hit_miss_and_in_place_reload(self):
        cache = WeightCache()
        u, (q, qz, s) = make()
        a = cache.get("awq", q, qz, s)
        assert cache.get("awq", q, qz, s) is a and cache.repacks == 1
        u2, (q2, qz2, s2) = make()
        q.copy_(q2)  # in-place reload bumps the version counter
        b = cache.get("awq", q, qz, s)
        assert b is not a and cache.repacks == 2
        assert not torch.equal(a.qweight, b.qweight)

    def test_other_instance_gets_its_own_entry(self):
        cache = WeightCache()
        _, (q1, z1, s1) = make()
        _, (q2, z2, s2) = make()
        p1, p2 = cache.get("awq", q1, z1, s1), cache.get("awq", q2, z2, s2)
        assert p1 is not p2 and len(cache) == 2

    def test_freed_weights_expire_and_address_reuse_is_not_aliased(self):
        cache = WeightCache()
        _, (q, qz, s) = make()
        cache.get("awq", q, qz, s)
        ptr = q.data_ptr()
        del q, qz, s
        gc.collect()
        assert all(e.expired() for e in cache._entries.values())
        # a new tensor at the same address must never see the stale entry
        _, (q, qz, s) = make()
        before = cache.repacks
        cache.get("awq", q, qz, s)
        assert cache.repacks == before + 1 or q.data_ptr() != ptr
        assert len(cache) == 1  # the expired entry was swept

    def test_aux_mismatch_raises(self):
        cache = WeightCache()
        _, (q, qz, s) = make()
        idx = torch.arange(8)
        from awq_compile.runtime.weights import digest

        d = digest([idx])
        cache.get("awq", q, qz, s, [idx], aux_digest=d)
        with pytest.raises(RuntimeError, match="auxiliary tensor"):
            cache.get("awq", q, qz, s, [idx.flip(0)], aux_digest=d)

    def test_cache_does_not_keep_sources_alive(self):
        import weakref

        cache = weight_cache()
        q, qz, s = make(fmt="gptq_v2")[1]
        s = s.clone()  # the only reference is ours
        ref = weakref.ref(s)
        cache.get("gptq_v2", q, qz, s)
        del s
        gc.collect()
        assert ref() is None


def float64_grads(u, x, g):
    """d(sum(g * y))/dx and /dscales of y = x @ ((codes - zeros) * scales) in float64."""
    x64 = x.detach().double().requires_grad_()
    s64 = u.scales.detach().double().requires_grad_()
    K, N = u.codes.shape
    G = u.group_size
    w = (u.codes.double().view(K // G, G, N) - u.zeros.double()[:, None, :]) * s64[:, None, :]
    (x64 @ w.view(K, N) * g.double()).sum().backward()
    return x64.grad, s64.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_scales_gradient_matches_float64(dtype):
    """Issue 9 item 3a: scales that require grad get their gradient (it used to be dropped)."""
    u, (q, qz, s) = make(dtype=dtype)
    s = s.clone().requires_grad_()
    x = torch.randn(2, 3, 256, dtype=dtype, requires_grad=True)
    g = torch.randn(2, 3, 64, dtype=dtype)
    (op(x, q, qz, s, None, [], "t", "awq", 64, "*:torch_dequant", "") * g).sum().backward()
    gx, gs = float64_grads(u, x, g)
    assert s.grad is not None and s.grad.dtype == dtype and s.grad.shape == s.shape
    tol = 2e-3 if dtype == torch.float16 else 1e-5
    assert rel_err(s.grad, gs) < tol and rel_err(x.grad, gx) < tol


class AwqScalesParameter(torch.nn.Module):
    """A module that fine-tunes its AWQ scales (an nn.Parameter) through a plain dequant."""

    def __init__(self, q, qz, s, G, trainable=True):
        super().__init__()
        from awq_compile.models.awq_linear import dequantize_awq

        self._dq, self.G = dequantize_awq, G
        self.register_buffer("qweight", q.clone())
        self.register_buffer("qzeros", qz.clone())
        if trainable:
            self.scales = torch.nn.Parameter(s.clone())
        else:
            self.register_buffer("scales", s.clone())

    def forward(self, x):
        return x @ self._dq(self.qweight, self.qzeros, self.scales, self.G)


@pytest.mark.parametrize("inductor", [False, True])
def test_compiled_scales_gradient_matches_eager(inductor):
    torch._dynamo.reset()
    u, (q, qz, s) = make(dtype=torch.float32)
    eager, model = AwqScalesParameter(q, qz, s, 64), AwqScalesParameter(q, qz, s, 64)
    x = torch.randn(5, 256)
    g = torch.randn(5, 64)
    (eager(x) * g).sum().backward()
    compiled = torch.compile(model, backend="awq", options={"inductor": inductor})
    (compiled(x) * g).sum().backward()
    assert model.scales.grad is not None
    assert rel_err(model.scales.grad, eager.scales.grad) < 1e-5
    assert rel_err(model.scales.grad, float64_grads(u, x, g)[1]) < 1e-5


def test_input_gradient_with_reuse_weight_memory():
    """Issue 9 item 3b: backward read the in-place-rewritten buffer as AWQ (relative error ~1.2)."""
    torch._dynamo.reset()
    u, (q, qz, s) = make()
    model = AwqScalesParameter(q, qz, s, 64, trainable=False)
    compiled = torch.compile(model, backend="awq", options={"inductor": False, "reuse_weight_memory": True})
    x = torch.randn(4, 256, dtype=torch.float16, requires_grad=True)
    g = torch.randn(4, 64, dtype=torch.float16)
    for _ in range(2):
        x.grad = None
        (compiled(x) * g).sum().backward()
        assert rel_err(x.grad, float64_grads(u, x, g)[0]) < 2e-3
    assert not torch.equal(model.qweight, q)  # the buffer really holds the standard layout now


def test_fp16_overflow_of_the_eager_dequant_is_not_copied():
    """Issue 9 item 7, decided: eager's fp16 (q - z) * s overflows to ±inf and its matmul to NaN; we
    multiply in float32 and round once, so we return the float64 result rounded to fp16 (docs/formats.md)."""
    from awq_compile.models import AwqLinear

    torch._dynamo.reset()
    torch.manual_seed(0)
    m = AwqLinear(256, 64, 64)
    u, (q, qz, s) = make()
    with torch.no_grad():
        m.qweight.copy_(q), m.qzeros.copy_(qz), m.scales.fill_(30000.0)  # |q - z| >= 3 overflows fp16
    x = torch.randn(4, 256, dtype=torch.float16) / 256
    u.scales = m.scales.clone()
    ref = x.double() @ u.dequantize(torch.float64)
    assert float(ref.abs().max()) < 65504  # every true result is representable in fp16 ...
    with torch.no_grad():
        eager = m(x)
        compiled = torch.compile(m, backend="awq", options={"inductor": False})(x)
    assert bool(eager.isnan().all())      # ... yet eager returns NaN
    assert bool(compiled.isfinite().all()) and rel_err(compiled, ref) < 2e-3
    # where the true result does not fit fp16 we return ±inf (the rounded value), never NaN
    y = op(x * 8, q, qz, m.scales, None, [], "t", "awq", 64, "*:torch_dequant", "")
    ref8 = (x * 8).double() @ u.dequantize(torch.float64)
    assert bool((ref8.abs() > 65519).any())
    assert torch.equal(y.isinf(), ref8.abs() > 65519) and not bool(y.isnan().any())
