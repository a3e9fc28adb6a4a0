"""Test configuration.

Triton kernels run under the interpreter on machines without a GPU; Triton reads TRITON_INTERPRET when
it is first imported, so it is set here, before any test module imports triton.  On a GPU machine the
kernels run for real (and the GPU-only tests run).
"""

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    assert "triton" not in sys.modules or os.environ.get("TRITON_INTERPRET") == "1", \
        "triton was imported before conftest could enable the interpreter"
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch: Dynamo's caches would otherwise carry graphs across tests."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
