"""One module per kernel spec.  Every module here defines ``SPECS``, a tuple of
:class:`~awq_compile.kernels.spec.KernelSpec`; :func:`all_specs` collects them on first use (no import-time
work, no list to edit).  Spec modules import no Triton: their ``plan`` functions import the jit code when a
launch or an AOT compile is planned.  See ``awq_compile/kernels/README.md`` for adding a kernel.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

__all__ = ["all_specs", "get_spec"]


@functools.lru_cache(maxsize=None)
def all_specs() -> dict:
    """{spec id: KernelSpec} over every module of this package, in module-name order."""
    out = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for spec in getattr(module, "SPECS", ()):
            if spec.id in out:
                raise ValueError(f"kernel spec {spec.id!r} is defined twice ({module.__name__})")
            out[spec.id] = spec
    return out


def get_spec(kernel_id: str):
    specs = all_specs()
    if kernel_id not in specs:
        raise KeyError(f"unknown kernel {kernel_id!r}; known: {sorted(specs)}")
    return specs[kernel_id]
