"""The deployment path on a GPU: ``awq_compile.export`` with our kernels compiled into the AOTInductor package
(the triton_op path), loaded and run in a *separate process that never imports awq_compile*, against float64.

Run on the device from a source tree (nothing installed)::

    PYTHONPATH=$PWD python -m pytest tests/test_gpu_export.py -q -s

The package is loaded in a subprocess (tests/_aoti_runner.py): on torch 2.11 ``aoti_load_package`` of a package calling our opaque
custom op died with SIGSEGV, and so did this test's triton_op package (H200, torch 2.11.0+cu130, 2026-12-01,
no proxy-executor call in its C++) -- as did plain nn.Linear control packages built without awq_compile on
that build (benchmarks/results/2026-12-01-h200-aoti-control.log); a crash must be reported (with its
signal), not take pytest down.
``awq_compile.export`` therefore refuses GPU packaging on torch < 2.13: there this test checks the refusal
and the rewritten program (run eagerly) instead; ``AWQ_TEST_PACKAGE_ON_OLD_TORCH=1`` packages anyway, to
see whether a newer 2.11/2.12 build still crashes.  With
``-s`` the test prints what the path costs: export / rewrite / package seconds, package size, and
per-call microseconds of the loaded package next to ``torch.compile(backend="awq")`` on the same module.
"""

import os
import time

import pytest
import torch
from torch import nn

from _aoti_runner import run as run_package

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA or ROCm GPU")

TIME_M = (1, 16)


class Mlp(nn.Module):
    def __init__(self, dims=(4096, 4096, 4096, 4096)):
        super().__init__()
        from awq_compile.models.awq_linear import AwqLinear

        self.layers = nn.ModuleList(
            AwqLinear.from_float(nn.Linear(a, b, bias=(i == 0)), group_size=128, dtype=torch.float16)
            for i, (a, b) in enumerate(zip(dims, dims[1:])))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i + 1 < len(self.layers):
                x = torch.relu(x)
        return x


def _reference(net, x):
    from awq_compile.models.awq_linear import dequantize_awq

    h = x.double()
    for i, layer in enumerate(net.layers):
        h = h @ dequantize_awq(layer.qweight, layer.qzeros, layer.scales.double(), layer.group_size)
        if layer.bias is not None:
            h = h + layer.bias.double()
        if i + 1 < len(net.layers):
            h = torch.relu(h)
    return h


def _rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


def _compiled_micros(net, m):
    fn = torch.compile(net, backend="awq")
    x = torch.randn(m, net.layers[0].in_features, dtype=torch.float16, device="cuda")
    with torch.no_grad():
        for _ in range(10):
            fn(x)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(200):
            fn(x)
        end.record()
        torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / 200


def _package_calls_python(package: str) -> bool | None:
    """Whether the package's generated C++ calls an op through the proxy executor (None: no C++ in it)."""
    import zipfile

    with zipfile.ZipFile(package) as z:
        sources = [n for n in z.namelist() if n.endswith(".cpp")]
        if not sources:
            return None
        return any(b"proxy_executor_call_function" in z.read(n) for n in sources)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static_M16", "dynamic_M"])
def test_exported_package_runs_our_kernels_without_python(dynamic, tmp_path):
    import awq_compile

    torch.manual_seed(7)
    net = Mlp().cuda().eval()
    x = torch.randn(16, 4096, dtype=torch.float16, device="cuda")
    shapes = {"x": {0: torch.export.Dim("M", min=1, max=4096)}} if dynamic else None
    import awq_compile.exporting as exporting

    if exporting._TORCH < (2, 13):
        if os.environ.get("AWQ_TEST_PACKAGE_ON_OLD_TORCH") == "1":
            exporting._TORCH = (2, 13)
        else:
            with pytest.raises(RuntimeError, match="GPU package.*segmentation fault"):
                awq_compile.export(net, (x,), package_path=str(tmp_path / "mlp.pt2"), dynamic_shapes=shapes)
            result = awq_compile.export(net, (x,), package=False, dynamic_shapes=shapes)
            assert all(p.startswith("triton_op") for p in result.paths.values()), result.paths
            mod = result.program.module()
            for m in ((1, 16, 300) if dynamic else (16,)):
                xm = torch.randn(m, 4096, dtype=torch.float16, device="cuda")
                with torch.no_grad():
                    assert _rel(mod(xm), _reference(net, xm)) < 1e-2, m
            return
    t0 = time.perf_counter()
    result = awq_compile.export(net, (x,), package_path=str(tmp_path / "mlp.pt2"), dynamic_shapes=shapes)
    total = time.perf_counter() - t0
    assert all(p.startswith("triton_op") for p in result.paths.values()), result.paths
    targets = [n.target for m in result.program.graph_module.modules() if isinstance(m, torch.fx.GraphModule)
               for n in m.graph.nodes if n.op == "call_function"]
    assert torch.ops.awq_compile.w4a16_linear.default not in targets
    # on a GPU build the op's body traces: the kernels show as functional triton-kernel nodes
    import inspect

    if "decompose_custom_triton_ops" in inspect.signature(result.program.run_decompositions).parameters:
        decomposed = result.program.run_decompositions(decompose_custom_triton_ops=True)
        names = [str(n.target) for m in decomposed.graph_module.modules() if isinstance(m, torch.fx.GraphModule)
                 for n in m.graph.nodes if n.op == "call_function"]
        assert any("triton_kernel_wrapper_functional" in t for t in names), names
    else:
        print(f"\ntorch {torch.__version__}: run_decompositions has no decompose_custom_triton_ops; not checked")
    calls_python = _package_calls_python(result.package_path)
    assert calls_python is not True, "the package calls an op through the proxy executor (Python)"

    ms = (1, 3, 16, 100, 300, 2048) if dynamic else (16,)
    xs = {m: torch.randn(m, 4096, dtype=torch.float16, device="cuda") for m in set(ms) | set(TIME_M)
          if dynamic or m == 16}
    outs, micros = run_package(result.package_path, xs, tmp_path, "dynamic" if dynamic else "static",
                               device="cuda", time_m=TIME_M)
    errors = {m: _rel(outs[m], _reference(net, xm)) for m, xm in xs.items()}
    compiled = {m: _compiled_micros(net, m) for m in micros}
    size = os.path.getsize(result.package_path)
    print(f"\nAOTI export ({'dynamic M 1..4096' if dynamic else 'static M=16'}, 3 AWQ layers 4096x4096 g128 fp16, "
          f"torch {torch.__version__}): export {result.seconds['export']:.1f} s, rewrite {result.seconds['rewrite']:.1f} s, "
          f"package {result.seconds['aoti']:.1f} s (total {total:.1f} s), package {size / 2**20:.1f} MiB, "
          f"proxy-executor calls in the C++: {calls_python}")
    for m in sorted(micros):
        print(f"  M={m}: loaded package {micros[m]:.1f} us/call, torch.compile(backend='awq') {compiled[m]:.1f} us/call")
    for name, path in result.paths.items():
        print(f"  {name}: {path}")
    print(f"  relative error vs float64 per M: {errors}")
    assert all(err < 1e-2 for err in errors.values()), errors
