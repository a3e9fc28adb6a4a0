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

# backend="awq" comes from the installed package's entry point; a source tree on a machine where the package
# is not installed (the GPU device gets a copy of the tree) registers it here, or every such test fails
from torch._dynamo import list_backends, register_backend  # noqa: E402

if "awq" not in list_backends(exclude_tags=()):
    from awq_compile.backend import awq_backend

    register_backend(awq_backend, name="awq")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch: Dynamo's caches would otherwise carry graphs across tests."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
