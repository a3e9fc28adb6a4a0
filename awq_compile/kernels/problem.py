"""What a kernel is asked to compute: a plain value, independent of graphs and devices."""

from __future__ import annotations

import dataclasses

ACT_DTYPES = ("float16", "bfloat16", "float32")
LAYOUTS = ("standard", "kplanes")          # the packed layouts a layer's weight may be prepared in


@dataclasses.dataclass(frozen=True)
class Problem:
    """One W4A16 linear layer: y[M, N] = x[M, K] @ dequant(W)[K, N] (+ bias).

    ``m`` is the upper end of the M bucket being planned (None: any M).  ``layout`` is the packed layout
    the layer's weight is prepared in (``standard``, or ``kplanes`` where the target's table asks for it
    and :func:`~awq_compile.formats.kplanes.kplanes_reason` allows it); a kernel serves only the layouts
    its spec says its jit code reads (:attr:`~.spec.KernelSpec.layouts`).
    """

    K: int
    N: int
    group_size: int
    has_zeros: bool
    act_dtype: str = "float16"
    bits: int = 4
    has_bias: bool = False
    m: int | None = None
    layout: str = "standard"

    def with_m(self, m: int | None) -> "Problem":
        return dataclasses.replace(self, m=m)

    def with_layout(self, layout: str) -> "Problem":
        return dataclasses.replace(self, layout=layout)

    def basic_reason(self) -> str | None:
        """Reasons no 4-bit kernel at all can take this problem."""
        if self.bits != 4:
            return f"only 4-bit weights are supported, found {self.bits}-bit"
        if self.group_size <= 0 or self.K % self.group_size:
            return f"group size {self.group_size} does not divide K={self.K}"
        if self.K % 8 or self.N % 8:
            return f"K={self.K} and N={self.N} must be multiples of 8"
        if self.act_dtype not in ACT_DTYPES:
            return f"activation dtype {self.act_dtype} is not one of {ACT_DTYPES}"
        if self.layout not in LAYOUTS:
            return f"weight layout {self.layout!r} is not one of {LAYOUTS}"
        if self.layout == "kplanes":
            from ..formats.kplanes import kplanes_reason

            why = kplanes_reason(self.K, self.group_size)
            if why:
                return f"no kplanes form: {why}"
        return None
