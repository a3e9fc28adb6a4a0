"""Non-finite scales at compile time: the refusal says what was found (issue 9 item 7)."""

import pytest
import torch
from torch import nn

import awq_compile
from awq_compile.models import AwqLinear


def layer(seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(128, 64, bias=False)
    return AwqLinear.from_float(lin, 32).eval()


@pytest.mark.parametrize("value, found", [(float("nan"), "1 NaN"), (float("inf"), "1 Inf")])
def test_non_finite_scales_are_named_in_the_refusal(value, found):
    m = layer()
    with torch.no_grad():
        m.scales[2, 5] = value
    report = awq_compile.explain(m, torch.randn(3, 128, dtype=torch.float16))
    assert not report.layers and len(report.skipped) == 1
    reason = report.skipped[0].reason
    assert f"hold {found} at compile time (first at [2, 5])" in reason, reason
    assert "no known 4-bit layout" not in reason
