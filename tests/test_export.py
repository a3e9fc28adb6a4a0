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
    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.up = AwqLinear.from_float(nn.Linear(64, 128, bias=True), group_size=32, dtype=dtype)
        self.down = AwqLinear.from_float(nn.Linear(128, 64), group_size=32, dtype=dtype)

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


def _graph_targets(gm) -> list:
    return [n.target for m in gm.modules() if isinstance(m, torch.fx.GraphModule) for n in m.graph.nodes
            if n.op == "call_function"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cpu_export_packages_plain_aten_and_runs_without_awq_compile(dtype, tmp_path):
    # fp32: the dequant + matmul entry (torch ops in the triton_op's body, which AOTInductor inlines);
    # bf16: torch's int4 matmul on weights repacked for it.  Loaded in a process that never imports
    # awq_compile: the package holds no call back into Python (and so also loads on torch 2.11)
    from _aoti_runner import run as run_package

    torch.manual_seed(11 if dtype == torch.float32 else 12)
    net = Net(dtype)
    x = torch.randn(3, 64, dtype=dtype)
    M = torch.export.Dim("M", min=2, max=1024)
    result = awq_compile.export(net, (x,), package_path=str(tmp_path / "net.pt2"), dynamic_shapes={"x": {0: M}})
    assert [lay.name for lay in result.report.layers] == ["up", "down"]
    targets = _graph_targets(result.program.graph_module)
    assert torch.ops.awq_compile.w4a16_linear.default not in targets
    assert not any("bitwise_right_shift" in str(t) or t is torch.ops.aten.mm.default for t in targets)
    if dtype == torch.float32:
        assert targets.count(torch.ops.awq_compile.w4a16_linear_triton.default) == 2
        assert all(p == "triton_op: M 2..1024: torch_dequant" for p in result.paths.values()), result.paths
    else:
        assert targets.count(torch.ops.aten._weight_int4pack_mm_for_cpu.default) == 2
        assert all(p.startswith("aten: M 2..1024: cpu_int4pack") for p in result.paths.values()), result.paths
    assert set(result.seconds) == {"export", "rewrite", "aoti"}
    xs = {m: torch.randn(m, 64, dtype=dtype) for m in (2, 3, 17, 1024)}
    outs, _ = run_package(result.package_path, xs, tmp_path, f"cpu_{dtype}")
    for m, xm in xs.items():
        assert rel_err(outs[m], _reference(net, xm)) < (1e-5 if dtype == torch.float32 else 1e-2), m


def test_export_without_package_gives_the_rewritten_program(net):
    x = torch.randn(2, 64)
    result = awq_compile.export(net, (x,), package=False)
    assert result.package_path is None
    assert rel_err(result.program.module()(x), _reference(net, x)) < 1e-5


# ---------------------------------------------------------------- GPU targets: the triton_op path
class HalfNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = AwqLinear.from_float(nn.Linear(256, 128, bias=True), group_size=128, dtype=torch.float16)
        self.down = AwqLinear.from_float(nn.Linear(128, 64), group_size=64, dtype=torch.float16)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


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
    # sm90's table asks for kplanes weights: the export plans the layer ("up": K, G multiples of 128) for
    # the standard layout its constants hold instead, and says so ("down" has no kplanes form: G = 64)
    note = " (standard layout: the table asks for kplanes, which the export does not carry)"
    assert result.paths["up"].endswith(note) == (target == "cuda:sm90") and not result.paths["down"].endswith(note)
    result.paths = {k: p.removesuffix(note) for k, p in result.paths.items()}
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
    sd, consts = result.program.state_dict, result.program.constants
    for name in ("up", "down"):
        layer = getattr(net, name)
        assert f"{name}.qweight" not in sd and f"{name}.qzeros" not in sd
        std = convert(Packed("awq", layer.qweight, layer.qzeros, layer.scales, layer.group_size), "standard")
        assert torch.equal(consts[f"{name}.qweight_awq_standard"], std.qweight)
        assert torch.equal(consts[f"{name}.qzeros_awq_standard"], std.qzeros)
        assert sd[f"{name}.scales"] is layer.scales
    assert not [k for k in consts if "lifted_tensor" in k]     # the dequant's own constants went with it
    if not interpreter_active():
        return    # CPU tensors run our kernels only under Triton's interpreter; tests/test_gpu_export.py on a GPU
    mod = result.program.module()
    for m in ((1, 3, 17, 300) if dynamic else (3,)):
        xm = torch.randn(m, 256, dtype=torch.float16)
        assert rel_err(mod(xm), _reference(net, xm)) < 2e-3, m


def test_a_source_weight_read_elsewhere_stays_beside_its_packed_copy():
    class ReadsItsWeight(HalfNet):
        def forward(self, x):
            return self.down(torch.relu(self.up(x))) + (self.up.qweight[0, :4] & 15).sum().to(x.dtype)

    torch.manual_seed(5)
    net = ReadsItsWeight()
    x = torch.randn(2, 256, dtype=torch.float16)
    result = awq_compile.export(net, (x,), package=False, options={"target": "cuda:sm90"})
    assert all(p.startswith("triton_op") for p in result.paths.values())
    sd, consts = result.program.state_dict, result.program.constants
    assert "up.qweight" in sd and "up.qweight_awq_standard" in consts      # still read by the user's code
    assert "up.qzeros" not in sd and "down.qweight" not in sd
    if interpreter_active():
        expected = _reference(net, x) + (net.up.qweight[0, :4] & 15).sum().double()
        assert rel_err(result.program.module()(x), expected) < 2e-3


def test_a_layer_that_cannot_be_compiled_in_keeps_the_custom_op_and_says_why(monkeypatch, caplog):
    import awq_compile.exporting as exporting

    real = exporting._refusal
    monkeypatch.setattr(exporting, "_refusal", lambda ep, m: "a test refusal" if m.name == "up" else real(ep, m))
    torch.manual_seed(8)
    net = HalfNet()
    x = torch.randn(2, 256, dtype=torch.float16)
    with caplog.at_level("WARNING", logger="awq_compile"):
        result = awq_compile.export(net, (x,), package=False, options={"target": "cuda:sm90"})
    assert result.paths["up"] == "custom_op (calls into Python at run time): a test refusal"
    assert result.paths["down"].startswith("triton_op")
    assert any("layer 'up' keeps the opaque custom op: a test refusal" in r.getMessage() for r in caplog.records)
    targets = _graph_targets(result.program.graph_module)
    assert targets.count(torch.ops.awq_compile.w4a16_linear.default) == 1
    assert targets.count(torch.ops.awq_compile.w4a16_linear_triton.default) == 1
    assert "up.qweight" in result.program.state_dict          # kept in its source layout for the custom op
    if interpreter_active():
        assert rel_err(result.program.module()(x), _reference(net, x)) < 2e-3


def test_old_torch_refuses_gpu_packages_and_packages_with_the_opaque_op(monkeypatch):
    # on the H200's torch 2.11 every AOTInductor GPU package segfaulted at load -- ours (opaque op or
    # every kernel compiled in) and a plain nn.Linear control package alike: GPU packages and packages
    # with the opaque op are refused there, with that evidence in the message; CPU packages of plain ATen are not
    import awq_compile.exporting as exporting

    calls = []
    monkeypatch.setattr(exporting, "_TORCH", (2, 11))
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package",
                        lambda ep, package_path=None, inductor_configs=None: calls.append(ep) or "pkg.pt2")
    torch.manual_seed(6)
    net = HalfNet()
    x = torch.randn(2, 256, dtype=torch.float16)
    assert awq_compile.export(net, (x,), options={"target": "cpu"}).package_path == "pkg.pt2"
    assert len(calls) == 1
    for target in ("cuda:sm90", "hip:gfx942"):
        with pytest.raises(RuntimeError, match="GPU package.*segmentation fault.*plain nn.Linear package.*needs torch >= 2.13"):
            awq_compile.export(net, (x,), options={"target": target})
        # the rewritten program is still there for whoever wants it
        assert awq_compile.export(net, (x,), options={"target": target}, package=False).package_path is None
    monkeypatch.setattr(exporting, "_refusal", lambda ep, m: "a test refusal")
    with pytest.raises(RuntimeError, match="2 layer\\(s\\) keep the opaque custom op.*needs torch >= 2.13"):
        awq_compile.export(net, (x,), options={"target": "cpu"})
    assert len(calls) == 1
    monkeypatch.setattr(exporting, "_TORCH", (2, 13))
    assert awq_compile.export(net, (x,), options={"target": "cuda:sm90"}).package_path == "pkg.pt2"


def test_gpu_target_export_of_a_3d_input_branches_on_the_product_of_its_leading_sizes():
    torch.manual_seed(9)
    net = HalfNet()
    x = torch.randn(2, 3, 256, dtype=torch.float16)
    shapes = {"x": {0: torch.export.Dim("B", min=1, max=8), 1: torch.export.Dim("T", min=1, max=64)}}
    result = awq_compile.export(net, (x,), package=False, options={"target": "cuda:sm90"}, dynamic_shapes=shapes)
    # M = B * T ranges over 1..512: the GEMV bucket up to the 129..512 one
    assert all(p.startswith("triton_op: M 1..4: triton_gemv") and p.split("; ")[-1].startswith("M 129..512: ")
               for p in result.paths.values()), result.paths
    if interpreter_active():
        mod = result.program.module()
        for b, t in ((1, 1), (2, 9), (3, 50)):
            xm = torch.randn(b, t, 256, dtype=torch.float16)
            assert rel_err(mod(xm), _reference(net, xm)) < 2e-3, (b, t)
