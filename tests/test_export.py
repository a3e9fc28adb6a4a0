"""torch.export and AOTInductor (issue 9 item 6).

``torch.export`` records AwqLinear's ``with torch.no_grad():`` dequant inside the higher-order op
``wrap_with_set_grad_enabled``; the backend and ``explain`` look through it.  ``awq_compile.export``
rewrites the exported program and packages it with AOTInductor; the package loads and runs on the CPU.
"""

import pytest
import torch
from torch import nn

import awq_compile
from awq_compile.models.awq_linear import AwqLinear, dequantize_awq

from awq_compile.backend import awq_backend
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


@pytest.mark.skipif(not torch.cuda.is_available() or _OLD_TORCH, reason="needs a CUDA or ROCm GPU and torch >= 2.13")
def test_export_package_on_the_gpu(tmp_path):
    torch.manual_seed(1)
    layer = AwqLinear.from_float(nn.Linear(4096, 4096), group_size=128, dtype=torch.float16).cuda()
    x = torch.randn(16, 4096, dtype=torch.float16, device="cuda")
    M = torch.export.Dim("M", min=2, max=4096)
    result = awq_compile.export(layer, (x,), package_path=str(tmp_path / "gpu.pt2"), dynamic_shapes={"x": {0: M}})
    assert [lay.name for lay in result.report.layers] == ["<root>"]
    runner = torch._inductor.aoti_load_package(result.package_path)
    w64 = dequantize_awq(layer.qweight, layer.qzeros, layer.scales.double(), layer.group_size)
    for m in (2, 16, 300):
        xm = torch.randn(m, 4096, dtype=torch.float16, device="cuda")
        assert rel_err(runner(xm), xm.double() @ w64) < 1e-2
    print("export seconds:", result.seconds)


@pytest.mark.skipif(not _OLD_TORCH, reason="the refusal applies to torch < 2.13 only")
def test_packaging_is_refused_clearly_on_old_torch(net):
    with pytest.raises(RuntimeError, match="needs torch >= 2.13"):
        awq_compile.export(net, (torch.randn(2, 64),))
