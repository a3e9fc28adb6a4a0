"""torch.export and AOTInductor (issue 9 item 6).

``torch.export`` records AwqLinear's ``with torch.no_grad():`` dequant inside the higher-order op
``wrap_with_set_grad_enabled``; the backend and ``explain`` look through it.  ``awq_compile.export``
rewrites the exported program and packages it with AOTInductor; the package loads and runs on the CPU.
For GPU targets the rewrite gives our triton_op with the weights repacked into the program's constants
(checked here for ``cuda:sm90`` and ``hip:gfx942`` under Triton's interpreter); the package on a real GPU
is tests/test_gpu_export.py.
"""

import pytest
import torch
from torch import nn

import awq_compile
from awq_compile.models.awq_linear import AwqLinear, dequantize_awq

from awq_compile.backend import awq_backend
from awq_compile.target import interpreter_active
from _util import rel_err


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = AwqLinear.from_float(nn.Linear(64, 128, bias=True), group_size=32, dtype=torch.float32)
        self.down = AwqLinear.from_float(nn.Linear(128, 64), group_size=32, dtype=torch.float32)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def _reference(net, x):
    def lin(layer, h):
        w = dequantize_awq(layer.qweight, layer.qzeros, layer.scales.double(), layer.group_size)
        out = h @ w
        return out if layer.bias is None else out + layer.bias.double()

    return lin(net.down, torch.relu(lin(net.up, x.double())))


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net()


def _exported_module(net, x):
    ep = torch.export.export(net, (x,))
    hop = torch.ops.higher_order.wrap_with_set_grad_enabled
    assert any(n.target is hop for n in ep.graph.nodes), "the dequant is no longer inside the grad-mode op"
    return ep.module()


def test_explain_looks_into_wrap_with_set_grad_enabled(net):
    x = torch.randn(3, 64)
    report = awq_compile.explain(_exported_module(net, x), x)
    assert [lay.name for lay in report.layers] == ["up", "down"], str(report)
    assert not report.skipped and all(lay.format == "awq" for lay in report.layers)


@pytest.mark.parametrize("inductor", [False, True])
def test_backend_rewrites_inside_wrap_with_set_grad_enabled(net, inductor):
    x = torch.randn(3, 64)
    mod = _exported_module(net, x)
    seen = {}

    def backend(gm, example_inputs):
        fn = awq_backend(gm, example_inputs, options={"inductor": inductor})
        codes = [m.code for m in gm.modules() if isinstance(m, torch.fx.GraphModule)]
        seen["ops"] = sum(c.count("torch.ops.awq_compile.w4a16_linear.default(") for c in codes)
        seen["dequant"] = sum(c.count("bitwise_right_shift") for c in codes)
        return fn

    out = torch.compile(mod, backend=backend)(x)
    assert seen == {"ops": 2, "dequant": 0}
    assert rel_err(out, _reference(net, x)) < 1e-5


_OLD_TORCH = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < (2, 13)


@pytest.mark.skipif(_OLD_TORCH, reason="torch < 2.13: loading the package segfaulted (H200 device, torch 2.11)")
def test_export_packages_with_aoti_and_runs_on_cpu(net, tmp_path):
    x = torch.randn(3, 64)
    M = torch.export.Dim("M", min=2, max=1024)
    result = awq_compile.export(net, (x,), package_path=str(tmp_path / "net.pt2"), dynamic_shapes={"x": {0: M}})
    assert [lay.name for lay in result.report.layers] == ["up", "down"]
    code = result.program.graph_module.code
    assert code.count("torch.ops.awq_compile.w4a16_linear.default(") == 2
    assert "bitwise_right_shift" not in code and "aten.mm" not in code
    assert set(result.seconds) == {"export", "rewrite", "aoti"}
    runner = torch._inductor.aoti_load_package(result.package_path)
    for m in (3, 17):
        xm = torch.randn(m, 64)
        assert rel_err(runner(xm), _reference(net, xm)) < 1e-5


def test_export_without_package_gives_the_rewritten_program(net):
    x = torch.randn(2, 64)
    result = awq_compile.export(net, (x,), package=False)
    assert result.package_path is None
    assert rel_err(result.program.module()(x), _reference(net, x)) < 1e-5


@pytest.mark.skipif(not _OLD_TORCH, reason="the refusal applies to torch < 2.13 only")
def test_packaging_is_refused_clearly_on_old_torch(net):
    with pytest.raises(RuntimeError, match="needs torch >= 2.13"):
        awq_compile.export(net, (torch.randn(2, 64),))


# ---------------------------------------------------------------- GPU targets: the triton_op path
class HalfNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = AwqLinear.from_float(nn.Linear(256, 128, bias=True), group_size=128, dtype=torch.float16)
        self.down = AwqLinear.from_float(nn.Linear(128, 64), group_size=64, dtype=torch.float16)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def _graph_targets(gm) -> list:
    return [n.target for m in gm.modules() if isinstance(m, torch.fx.GraphModule) for n in m.graph.nodes
            if n.op == "call_function"]


@pytest.mark.parametrize("dynamic", [False, True], ids=["static_M", "dynamic_M"])
@pytest.mark.parametrize("target", ["cuda:sm90", "hip:gfx942"])
def test_gpu_target_export_holds_the_triton_op_and_packed_constants(target, dynamic):
    from awq_compile.formats import convert
    from awq_compile.formats.packed import Packed

    torch.manual_seed(hash((target, dynamic)) % 1000)
    net = HalfNet()
    x = torch.randn(3, 256, dtype=torch.float16)
    shapes = {"x": {0: torch.export.Dim("M", min=1, max=4096)}} if dynamic else None
    result = awq_compile.export(net, (x,), package=False, options={"target": target}, dynamic_shapes=shapes)
    assert set(result.paths) == {"up", "down"}
    first = "triton_op: M 1.." if dynamic else "triton_op: M 3..3: "
    assert all(p.startswith(first) for p in result.paths.values()), result.paths
    targets = _graph_targets(result.program.graph_module)
    op = torch.ops.awq_compile.w4a16_linear_triton.default
    conds = targets.count(torch.ops.higher_order.cond)
    assert torch.ops.awq_compile.w4a16_linear.default not in targets          # no Python custom op
    assert not any("bitwise_right_shift" in str(t) for t in targets)          # the dequant is gone
    if dynamic:   # one call per plan entry the range meets, a cond on M in front of all but the last
        assert conds >= 2 and targets.count(op) == conds + 2
        assert sum(p.count(";") for p in result.paths.values()) == conds
        assert all(": triton_gemv" in p and ": triton_gemm" in p and p.endswith(tuple("0123456789"))
                   for p in result.paths.values())
    else:         # M = 3: one call per layer, the GEMV bucket, no branch
        assert conds == 0 and targets.count(op) == 2
        assert all(p.count(";") == 0 and "triton_gemv" in p for p in result.paths.values())
    # the weights are program constants in the standard layout, and the source layout is gone (no two copies)
    sd = result.program.state_dict
    for name in ("up", "down"):
        layer = getattr(net, name)
        assert f"{name}.qweight" not in sd and f"{name}.qzeros" not in sd
        std = convert(Packed("awq", layer.qweight, layer.qzeros, layer.scales, layer.group_size), "standard")
        assert torch.equal(sd[f"{name}.qweight_awq_standard"], std.qweight)
        assert torch.equal(sd[f"{name}.qzeros_awq_standard"], std.qzeros)
        assert sd[f"{name}.scales"] is layer.scales
    if not interpreter_active():
        return    # CPU tensors run our kernels only under Triton's interpreter; tests/test_gpu_export.py on a GPU
    mod = result.program.module()
    for m in ((1, 3, 17, 300) if dynamic else (3,)):
        xm = torch.randn(m, 256, dtype=torch.float16)
        assert rel_err(mod(xm), _reference(net, xm)) < 2e-3, m


def test_gpu_target_export_says_why_a_layer_keeps_the_custom_op(caplog):
    class ReadsItsWeight(HalfNet):
        def forward(self, x):
            return self.down(torch.relu(self.up(x))) + (self.up.qweight[0, :4] & 15).sum().to(x.dtype)

    torch.manual_seed(5)
    net = ReadsItsWeight()
    x = torch.randn(2, 256, dtype=torch.float16)
    with caplog.at_level("WARNING", logger="awq_compile"):
        result = awq_compile.export(net, (x,), package=False, options={"target": "cuda:sm90"})
    assert result.paths["up"].startswith("custom_op") and "qweight is also read outside" in result.paths["up"]
    assert result.paths["down"].startswith("triton_op")
    assert any("layer 'up' keeps the opaque custom op" in r.getMessage() for r in caplog.records)
    targets = _graph_targets(result.program.graph_module)
    assert targets.count(torch.ops.awq_compile.w4a16_linear.default) == 1
    assert targets.count(torch.ops.awq_compile.w4a16_linear_triton.default) == 1
    assert "up.qweight" in result.program.state_dict          # kept in its source layout for the custom op
    if not interpreter_active():
        return
    expected = _reference(net, x) + (net.up.qweight[0, :4] & 15).sum().double()
    assert rel_err(result.program.module()(x), expected) < 2e-3


def test_old_torch_refuses_only_packages_with_the_opaque_op(monkeypatch):
    # torch 2.11 segfaulted loading a package that calls the opaque op; the triton_op path is not refused
    import awq_compile.exporting as exporting

    calls = []
    monkeypatch.setattr(exporting, "_TORCH", (2, 11))
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package",
                        lambda ep, package_path=None, inductor_configs=None: calls.append(ep) or "pkg.pt2")
    torch.manual_seed(6)
    net = HalfNet()
    x = torch.randn(2, 256, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="2 layer\\(s\\) keep the opaque custom op.*needs torch >= 2.13"):
        awq_compile.export(net, (x,), options={"target": "cpu"})
    assert not calls
    result = awq_compile.export(net, (x,), options={"target": "cuda:sm90"})
    assert result.package_path == "pkg.pt2" and len(calls) == 1
