"""Backend options: ``torch.compile(m, backend="awq", options={...})`` and their environment variables.

===================  ============================  ==================================================
option               environment variable          meaning
===================  ============================  ==================================================
target               AWQ_COMPILE_TARGET            ``cpu``, ``cuda:sm90``, ``hip:gfx942``...; default:
                                                   detected from the device of the graph's weights
kernel               AWQ_COMPILE_KERNEL            force one kernel id for every layer
disabled_kernels     AWQ_COMPILE_DISABLED_KERNELS  comma-separated kernel ids never to choose
strict               AWQ_COMPILE_STRICT=1          raise instead of skipping a quantized-looking matmul
inductor             AWQ_COMPILE_INDUCTOR=0        hand the rewritten graph to Inductor (default) or
                                                   run it as is (eager FX)
dump_graphs          AWQ_COMPILE_DUMP              directory: write the FX graph before/after each pass
prepack              AWQ_COMPILE_PREPACK=0         repack the example weights at compile time (default)
                                                   rather than on the first call
reuse_weight_memory  AWQ_COMPILE_REUSE_WEIGHTS=1   opt-in: repack into the source buffers, freeing the
                                                   extra copy; mutates the user's module (its eager
                                                   forward is then invalid)
merge_projections    AWQ_COMPILE_MERGE=0           merge AWQ linears that read the same input (q/k/v,
                                                   gate/up) into one launch over the concatenated N
                                                   (default on; off with reuse_weight_memory)
mode                 --                            Inductor mode ("reduce-overhead" for CUDA graphs,
                                                   "max-autotune"); torch.compile refuses mode= together
                                                   with options=, so it can be given here
===================  ============================  ==================================================

Options given explicitly win over the environment; unknown option names raise.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from .target import Target

__all__ = ["Options"]

_TRUE = ("1", "true", "yes", "on")


def _flag(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in _TRUE
    return bool(value)


def _names(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class Options:
    target: Target | None = None
    kernel: str | None = None
    disabled_kernels: tuple[str, ...] = ()
    strict: bool = False
    inductor: bool = True
    dump_graphs: str | None = None
    prepack: bool = True
    reuse_weight_memory: bool = False
    merge_projections: bool = True
    mode: str | None = None

    _ENV = {
        "target": "AWQ_COMPILE_TARGET",
        "kernel": "AWQ_COMPILE_KERNEL",
        "disabled_kernels": "AWQ_COMPILE_DISABLED_KERNELS",
        "strict": "AWQ_COMPILE_STRICT",
        "inductor": "AWQ_COMPILE_INDUCTOR",
        "dump_graphs": "AWQ_COMPILE_DUMP",
        "prepack": "AWQ_COMPILE_PREPACK",
        "reuse_weight_memory": "AWQ_COMPILE_REUSE_WEIGHTS",
        "merge_projections": "AWQ_COMPILE_MERGE",
    }

    @classmethod
    def resolve(cls, options: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> "Options":
        env = os.environ if env is None else env
        given = dict(options or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(given) - known
        if unknown:
            raise ValueError(f"awq backend: unknown option(s) {sorted(unknown)}; known: {sorted(known)}")
        values: dict[str, Any] = {}
        for name, var in cls._ENV.items():
            if name in given:
                values[name] = given.pop(name)
            elif env.get(var):
                values[name] = env[var]
        values.update(given)
        if values.get("target") is not None:
            values["target"] = Target.parse(values["target"])
        for name in ("strict", "inductor", "prepack", "reuse_weight_memory", "merge_projections"):
            if name in values:
                values[name] = _flag(values[name])
        if "disabled_kernels" in values:
            values["disabled_kernels"] = _names(values["disabled_kernels"])
        if values.get("kernel") is not None:
            from .kernels.registry import KERNELS

            if values["kernel"] not in KERNELS:
                raise ValueError(f"awq backend: unknown kernel {values['kernel']!r}; known: {sorted(KERNELS)}")
        return cls(**values)
