"""The pipeline as analysis then transformation: each step on its own (issue 9, "Also")."""

import dataclasses

import pytest
import torch
from torch import nn

import awq_compile
from awq_compile.models.awq_linear import AwqLinear
from awq_compile.options import Options
from awq_compile.passes import (TRANSFORMS, Analysis, PassError, analyze, run_passes)
from awq_compile.passes.eliminate_dead_code import eliminate_dead_code
from awq_compile.passes.prepack_weights import prepack_weights
from awq_compile.passes.rewrite_awq_linears import rewrite_awq_linears
from awq_compile.runtime.planning import PlanRequest, plan_for, resolve
from awq_compile.runtime.weights import watch_signature, weight_cache
from awq_compile.target import Target
from awq_compile.kernels.problem import Problem

from _util import normalize_graph, op_count, rel_err


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = AwqLinear.from_float(nn.Linear(64, 32), group_size=32, dtype=torch.float32)
        self.down = AwqLinear.from_float(nn.Linear(32, 64), group_size=32, dtype=torch.float32)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


@pytest.fixture
def captured():
    """Dynamo's graph of ``Two`` and its example inputs, untouched by any of our passes."""
    torch.manual_seed(0)
    model = Two()
    x = torch.randn(3, 64)
    got = {}

    def keep(gm, example_inputs):
        got["gm"], got["inputs"] = gm, list(example_inputs)
        return gm.forward

    torch.compile(model, backend=keep)(x)
    return model, x, got["gm"], got["inputs"]


def _analysis(gm, inputs, **options) -> Analysis:
    return analyze(gm, inputs, options=Options.resolve(options), target=Target("cpu"))


def test_analysis_is_frozen_and_changes_nothing(captured):
    _, _, gm, inputs = captured
    before = normalize_graph(gm)
    repacks = weight_cache().repacks
    a = _analysis(gm, inputs)
    assert normalize_graph(gm) == before and weight_cache().repacks == repacks
    assert [lay.match.name for lay in a.layers] == ["up", "down"]
    assert [r.name for r in a.reports] == ["up", "down"] and a.skipped == ()
    m = a.layers[0].match
    assert (m.K, m.N, m.group_size, m.fmt) == (64, 32, 32, "awq")
    assert m.weight_nodes and all(n.graph is gm.graph for n in m.weight_nodes)
    assert a.layers[0].request.startswith("request:target=cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.layers = ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.name = "other"
    with pytest.raises(TypeError):
        a.bindings.values[m.qweight] = None  # read-only mapping


def test_rewrite_alone_swaps_the_matmuls_and_leaves_the_dequant(captured):
    model, x, gm, inputs = captured
    a = _analysis(gm, inputs)
    gm = rewrite_awq_linears(gm, a)
    text = normalize_graph(gm)
    assert op_count(text) == 2 and "torch.matmul" not in text and "bitwise_right_shift" in text
    assert rel_err(gm(*inputs)[0], model(x)) < 1e-5


def test_prepack_alone_fills_the_cache_and_leaves_the_graph(captured):
    _, _, gm, inputs = captured
    a = _analysis(gm, inputs)
    before = normalize_graph(gm)
    weight_cache().clear()
    repacks = weight_cache().repacks
    prepack_weights(gm, a)
    assert weight_cache().repacks == repacks + 2 and normalize_graph(gm) == before
    prepack_weights(gm, _analysis(gm, inputs, prepack=False))
    assert weight_cache().repacks == repacks + 2


def test_dead_code_after_rewrite_removes_the_dequant_only(captured):
    model, x, gm, inputs = captured
    a = _analysis(gm, inputs)
    gm = eliminate_dead_code(rewrite_awq_linears(gm, a), a)
    text = normalize_graph(gm)
    assert "bitwise_right_shift" not in text and "relu" in text and op_count(text) == 2
    assert rel_err(gm(*inputs)[0], model(x)) < 1e-5


def test_the_transformations_in_order():
    assert [p.__name__ for p in TRANSFORMS] == ["rewrite_awq_linears", "merge_projections", "prepack_weights",
                                               "eliminate_dead_code"]


def test_run_passes_names_the_failing_pass(captured):
    _, _, gm, inputs = captured
    a = _analysis(gm, inputs)

    def broken_pass(gm, analysis):
        raise KeyError("boom")

    with pytest.raises(PassError, match=r"pass broken_pass failed on graph \d+: KeyError: 'boom'") as info:
        run_passes(gm, a, passes=(rewrite_awq_linears, broken_pass))
    assert info.value.pass_name == "broken_pass" and isinstance(info.value.__cause__, KeyError)


def test_explain_runs_the_analysis_alone():
    torch.manual_seed(1)
    model = Two()
    x = torch.randn(2, 64)
    repacks = weight_cache().repacks
    report = awq_compile.explain(model, x)
    assert [lay.name for lay in report.layers] == ["up", "down"]
    assert weight_cache().repacks == repacks


def test_passes_and_report_import_no_driver():
    import awq_compile.report as report

    assert not hasattr(report, "explain")  # the driver lives in awq_compile.explaining


def test_plan_request_round_trip_and_cached_plans():
    req = PlanRequest(Target.parse("hip:gfx942"), "triton_gemm", ("triton_gemv",))
    assert PlanRequest.decode(req.encode()) == req
    assert PlanRequest.decode(PlanRequest(Target("cpu")).encode()) == PlanRequest(Target("cpu"))
    p = Problem(4096, 4096, 128, True, "float16")
    assert plan_for(req, p) is plan_for(req, p)
    assert {e.kernel for e in resolve(req.encode(), p).entries} == {"triton_gemm"}
    fixed = resolve(plan_for(req, p).encode(), p)
    assert fixed.entries == plan_for(req, p).entries
    with pytest.raises(ValueError, match="layer 'odd'"):
        resolve(PlanRequest(Target("cpu")).encode(), Problem(100, 12, 7, True, "float16"), "odd")


def test_watch_signature_sees_replacement_and_writes():
    a, b = torch.zeros(4), torch.zeros(4)
    sig = watch_signature([a, b])
    assert watch_signature([a, b]) == sig
    b.add_(1)
    assert watch_signature([a, b]) != sig
    assert watch_signature([a, b.clone()]) != watch_signature([a, b])
