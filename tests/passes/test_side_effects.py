"""Our pipeline deletes or reorders nothing of the user's graph but the dequant nodes it made dead.

Issue 9 item 0: AutoAWQ's ``WQLinear_GEMM`` launches its own Triton GEMM, which accumulates into a
buffer it allocated; Dynamo records the launch as the higher-order op ``triton_kernel_wrapper_mutation``,
whose result nobody reads.  A whole-graph dead-code elimination (FX counts higher-order ops as pure)
deleted it, and the compiled layer returned the uninitialised buffer (zeros on a GPU).

On this CPU machine Dynamo captures a user Triton kernel as that higher-order op only if it believes a
Triton device exists (``torch.utils._triton.has_triton``) and the kernel is a ``JITFunction``; under
``TRITON_INTERPRET=1`` ``@triton.jit`` gives an ``InterpretedFunction`` that Dynamo would trace into.  The
fixture below provides both: a ``JITFunction`` whose launches run in the Triton interpreter, and
``has_triton`` reporting True for the test.  The graph then holds exactly the node AutoAWQ's layer makes.
"""


import pytest
import torch
from torch import nn

from awq_compile.models.awq_linear import AwqLinear

from _util import Capture, op_count, rel_err

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")


def _interpreted_jit(fn):
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    class InterpretedJIT(JITFunction):
        """A real ``JITFunction`` (what Dynamo captures) launched through the interpreter (CPU)."""

        def __init__(self, f):
            super().__init__(f)
            self._interpreted = InterpretedFunction(f)

        def run(self, *args, grid, warmup, **kwargs):
            return self._interpreted.run(*args, grid=grid, warmup=warmup, **kwargs)

    return InterpretedJIT(fn)


def _affine_into(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    v = tl.load(x_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, v * 2.0 + 1.0, mask=mask)


@pytest.fixture
def user_triton_kernel(monkeypatch):
    import torch.utils._triton as triton_utils

    monkeypatch.setattr(triton_utils, "has_triton", lambda: True)
    return _interpreted_jit(_affine_into)


class TritonAfterAwq(nn.Module):
    """An AWQ linear, then a user Triton kernel writing into a buffer allocated here (AutoAWQ-style)."""

    def __init__(self, kernel, K=64, N=32):
        super().__init__()
        self.kernel = kernel
        self.lin = AwqLinear.from_float(nn.Linear(K, N, bias=True), group_size=32, dtype=torch.float32)

    def forward(self, x):
        y = self.lin(x)
        out = torch.empty_like(y)
        n = y.numel()
        self.kernel[(triton.cdiv(n, 64),)](y, out, n, BLOCK=64)
        return out


def _hop_count(text: str) -> int:
    return text.count("triton_kernel_wrapper_mutation")


def test_user_triton_kernel_writing_a_preallocated_buffer_survives_the_rewrite(user_triton_kernel):
    torch.manual_seed(0)
    model = TritonAfterAwq(user_triton_kernel)
    x = torch.randn(5, 64)
    ref = model(x)
    assert ref.abs().max() > 0.5
    cap = Capture(inductor=False)
    out = torch.compile(model, backend=cap)(x)
    assert _hop_count(cap.before[0]) == 1, "Dynamo did not capture the kernel as the higher-order op"
    assert _hop_count(cap.after[0]) == 1 and op_count(cap.after[0]) == 1
    assert rel_err(out, ref) < 1e-5
    x2 = torch.randn(5, 64)
    assert rel_err(torch.compile(model, backend=cap)(x2), model(x2)) < 1e-5


def test_user_triton_kernel_reaches_inductor_intact(user_triton_kernel, monkeypatch):
    """With Inductor on: the graph we hand to ``compile_fx`` still launches the kernel (Inductor cannot
    compile a user Triton kernel on a CPU, so the handed graph is recorded and run as it is)."""
    import torch._inductor.compile_fx as cfx

    handed = []

    def record(gm, example_inputs, **kw):
        handed.append(gm)
        return gm.forward

    monkeypatch.setattr(cfx, "compile_fx", record)
    torch.manual_seed(1)
    model = TritonAfterAwq(user_triton_kernel, K=128, N=64)
    x = torch.randn(3, 128)
    out = torch.compile(model, backend="awq")(x)
    assert len(handed) == 1
    code = handed[0].code
    assert "triton_kernel_wrapper_mutation" in code and "w4a16_linear" in code
    assert rel_err(out, model(x)) < 1e-5


@torch.library.custom_op("awq_compile_test::affine_into", mutates_args=("out",))
def _affine_into_op(x: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(x * 2.0 + 1.0)


class MutatingOpAfterAwq(nn.Module):
    def __init__(self, spelling):
        super().__init__()
        self.spelling = spelling
        self.lin = AwqLinear.from_float(nn.Linear(64, 32), group_size=32, dtype=torch.float32)

    def forward(self, x):
        y = self.lin(x)
        out = torch.empty_like(y)
        if self.spelling == "custom_op":
            torch.ops.awq_compile_test.affine_into(y, out)
        else:  # out= of a plain torch function: the result unused, the write is the point
            torch.mul(y, 2.0, out=out)
            out += 1.0
        return out


@pytest.mark.parametrize("inductor", [False, True])
@pytest.mark.parametrize("spelling", ["custom_op", "out_kwarg"])
def test_mutating_ops_writing_a_preallocated_buffer_are_kept(spelling, inductor):
    torch.manual_seed(2)
    model = MutatingOpAfterAwq(spelling)
    x = torch.randn(4, 64)
    ref = model(x)
    out = torch.compile(model, backend="awq", options={"inductor": inductor})(x)
    assert rel_err(out, ref) < 1e-5


class UserDeadCode(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = AwqLinear.from_float(nn.Linear(64, 32), group_size=32, dtype=torch.float32)

    def forward(self, x):
        unused = torch.sin(x) * 3  # noqa: F841  (the user's own dead code: not ours to delete)
        return self.lin(x)


def test_only_the_dequant_nodes_are_removed():
    cap = Capture(inductor=False)
    torch.manual_seed(3)
    model = UserDeadCode()
    x = torch.randn(2, 64)
    out = torch.compile(model, backend=cap)(x)
    assert rel_err(out, model(x)) < 1e-5
    before, after = cap.before[0], cap.after[0]
    assert "torch.sin" in after and "operator.mul" in after.replace("torch.mul", "operator.mul")
    assert "bitwise_right_shift" in before and "bitwise_right_shift" not in after
    assert "repeat_interleave" not in after and op_count(after) == 1


def _node(graph, fn, *args, **kwargs):
    return graph.call_function(fn, args, kwargs)


def test_writes_nothing_is_conservative():
    from awq_compile.passes.eliminate_dead_code import writes_nothing

    g = torch.fx.Graph()
    a = g.placeholder("a")
    b = g.placeholder("b")
    assert writes_nothing(_node(g, torch.add, a, b))
    assert writes_nothing(_node(g, torch.ops.aten.add.Tensor, a, b))
    assert not writes_nothing(_node(g, torch.add, a, b, out=b))
    assert not writes_nothing(_node(g, torch.ops.aten.add_.Tensor, a, b))
    assert not writes_nothing(_node(g, torch.ops.aten.copy_.default, a, b))
    assert not writes_nothing(_node(g, torch.ops.awq_compile_test.affine_into.default, a, b))
    import operator

    assert not writes_nothing(_node(g, operator.setitem, a, 0, b))
    assert not writes_nothing(_node(g, operator.iadd, a, b))
    assert writes_nothing(_node(g, operator.and_, a, b))
    assert not writes_nothing(g.call_method("mul_", (a, b)))
    assert writes_nothing(g.call_method("mul", (a, b)))
    from torch._higher_order_ops.triton_kernel_wrap import triton_kernel_wrapper_mutation

    assert not writes_nothing(_node(g, triton_kernel_wrapper_mutation, kernel_idx=0, constant_args_idx=0,
                                    grid=[(1, 1, 1)], tma_descriptor_metadata={}, kwargs={}))
    assert not writes_nothing(_node(g, torch.rand, 3))   # random: advances the generator
    assert not writes_nothing(g.call_module("m", (a,)))


def _packed_gemm_like(x_ptr, qweight_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """Stands in for AutoAWQ's Triton GEMM: reads int32 packed words, writes the output buffer."""
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    q = tl.load(qweight_ptr + offs, mask=mask)
    v = tl.load(x_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, v + (q & 15).to(tl.float32), mask=mask)


class TritonPackedLayer(nn.Module):
    def __init__(self, kernel):
        super().__init__()
        self.kernel = kernel
        self.register_buffer("qweight", torch.randint(0, 2 ** 31 - 1, (8, 4), dtype=torch.int32))

    def forward(self, x):
        out = torch.empty_like(x)
        self.kernel[(1,)](x, self.qweight, out, x.numel(), BLOCK=32)
        return out


class Wrapped(nn.Module):
    def __init__(self, kernel):
        super().__init__()
        self.proj = TritonPackedLayer(kernel)
        self.lin = AwqLinear.from_float(nn.Linear(64, 32), group_size=32, dtype=torch.float32)

    def forward(self, x):
        return self.proj(self.lin(x)[:, :8].reshape(4, 8))


def test_explain_lists_a_user_triton_kernel_on_packed_weights_as_skipped(monkeypatch):
    import awq_compile
    import torch.utils._triton as triton_utils

    monkeypatch.setattr(triton_utils, "has_triton", lambda: True)
    torch.manual_seed(4)
    model = Wrapped(_interpreted_jit(_packed_gemm_like))
    x = torch.randn(4, 64)
    report = awq_compile.explain(model, x)
    assert [lay.name for lay in report.layers] == ["lin"]
    (skip,) = report.skipped
    assert skip.name == "proj" and "_packed_gemm_like" in skip.reason and "qweight_ptr=(8, 4)" in skip.reason
    assert "awq_compile.load_pretrained" in skip.reason
    out = torch.compile(model, backend="awq", options={"inductor": False})(x)
    assert rel_err(out, model(x)) < 1e-6
