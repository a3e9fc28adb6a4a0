"""The vocabulary of a kernel spec: typed configs, launch options, shape filters and the launch plan.

Nothing here imports Triton or torch: selection (:mod:`.registry`), table parsing (:mod:`.configs`) and
the ahead-of-time planner read these classes on machines without a GPU and without Triton's kernels.

* :class:`KernelConfig` -- a frozen dataclass per jit kernel whose fields are the kernel's tile,
  split-K and variant constexprs (upper-case, as the kernel names them).  Fields without a default are
  required in a table; :meth:`KernelConfig.check` is the kernel's pruning rule and
  :meth:`KernelConfig.shared_bytes` its shared-memory estimate.
* :class:`LaunchOptions` (``num_warps``, ``num_stages``) with a CUDA subclass (``maxnreg``) and a ROCm
  subclass (``waves_per_eu``, ``matrix_instr_nonkdim``, ``kpack``): what the compiler takes besides the
  constexprs.  ``None`` means "the compiler's default" and is not passed.
* :class:`ShapeFilter` -- a table entry's optional ``K_MIN``/``K_MAX``/``N_MIN``/``N_MAX`` (inclusive):
  selection data that keeps different tiles per shape class under one M bucket; never reaches a kernel.
* :class:`KernelSpec` -- one kernel: the targets and dtypes it serves, its config class and its
  ``plan`` function ``(config, launch, problem, target, interpret) -> LaunchPlan``.
* :class:`LaunchPlan` -- everything one launch needs except the tensors: jit function, grid,
  constexprs, launch options, activation regrouping, split-K workspace; built by the same pure function
  for the launcher (:mod:`.triton.launch`) and the AOT compiler (:mod:`.aot`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

from .problem import Problem

__all__ = ["KernelConfig", "LaunchOptions", "CudaLaunchOptions", "HipLaunchOptions", "ShapeFilter",
           "KernelSpec", "LaunchPlan", "Operands", "TableError", "launch_options_class", "fused_arguments",
           "k_tile_reason", "plan_launch"]


class TableError(ValueError):
    """A tuning table (or a plan text) that does not parse: names the file, arch and entry."""


def _check_int(where: str, key: str, value, *, flag: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TableError(f"{where}: {key}={value!r} must be an integer")
    if flag and value not in (0, 1):
        raise TableError(f"{where}: {key}={value!r} is a switch: 0 or 1")
    if not flag and value < 0:
        raise TableError(f"{where}: {key}={value!r} must not be negative")
    return value


class _Keyed:
    """Frozen dataclasses whose fields are written in tables under their own names (or ``KEYS``)."""

    KEYS: ClassVar[dict] = {}          # field name -> table key, where they differ

    @classmethod
    def table_keys(cls) -> dict:
        """table key -> (field name, required, is a switch)."""
        out = {}
        for f in dataclasses.fields(cls):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            out[cls.KEYS.get(f.name, f.name)] = (f.name, required, f.type in ("bool", bool))
        return out

    @classmethod
    def from_table(cls, values: dict, where: str, *, require: tuple = ()):
        """Build from the table keys in ``values`` (all of them must belong to this class)."""
        keys = cls.table_keys()
        unknown = sorted(set(values) - set(keys))
        if unknown:
            raise TableError(f"{where}: unknown key(s) {', '.join(unknown)} for {cls.__name__} "
                             f"(known: {', '.join(keys)})")
        missing = [k for k, (_, req, _) in keys.items() if (req or k in require) and k not in values]
        if missing:
            raise TableError(f"{where}: missing key(s) {', '.join(missing)} for {cls.__name__}")
        kw = {}
        for key, value in values.items():
            name, _, flag = keys[key]
            value = _check_int(where, key, value, flag=flag)
            kw[name] = bool(value) if flag else value
        return cls(**kw)

    def items(self) -> tuple:
        """(table key, value) for every field that is set (switches as 0/1), in field order."""
        out = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            out.append((self.KEYS.get(f.name, f.name), int(v) if isinstance(v, bool) else v))
        return tuple(out)


@dataclasses.dataclass(frozen=True)
class LaunchOptions(_Keyed):
    """Launch options every backend takes; ``None``: the compiler's default (not passed)."""

    num_warps: int | None = None
    num_stages: int | None = None

    BACKEND: ClassVar[str | None] = None
    TABLE_REQUIRED: ClassVar[tuple] = ("num_warps", "num_stages")   # a table states both

    def for_backend(self, backend: str) -> dict:
        """The options for a ``backend`` compiler; options of another backend are an error."""
        if self.BACKEND is not None and self.BACKEND != backend:
            raise ValueError(f"{type(self).__name__} {dict(self.items())} are {self.BACKEND} launch options, "
                             f"not {backend}")
        return dict(self.items())

    @property
    def stages(self) -> int:
        """Pipeline stages for the shared-memory estimate (Triton's usual 2 when unset)."""
        return max(1, 2 if self.num_stages is None else self.num_stages)


@dataclasses.dataclass(frozen=True)
class CudaLaunchOptions(LaunchOptions):
    maxnreg: int | None = None
    BACKEND: ClassVar[str | None] = "cuda"


@dataclasses.dataclass(frozen=True)
class HipLaunchOptions(LaunchOptions):
    """ROCm: ``waves_per_eu`` (occupancy hint; 0 = compiler's choice), ``matrix_instr_nonkdim`` (16 or 32
    MFMA), ``kpack``."""

    waves_per_eu: int | None = None
    matrix_instr_nonkdim: int | None = None
    kpack: int | None = None
    BACKEND: ClassVar[str | None] = "hip"


def launch_options_class(backend: str | None) -> type[LaunchOptions]:
    return {"cuda": CudaLaunchOptions, "hip": HipLaunchOptions}.get(backend, LaunchOptions)


@dataclasses.dataclass(frozen=True)
class ShapeFilter(_Keyed):
    k_min: int | None = None
    k_max: int | None = None
    n_min: int | None = None
    n_max: int | None = None
    KEYS: ClassVar[dict] = {"k_min": "K_MIN", "k_max": "K_MAX", "n_min": "N_MIN", "n_max": "N_MAX"}

    def reason(self, K: int, N: int) -> str | None:
        for key, bound, value, ok in (("K_MIN", self.k_min, K, lambda v, b: v >= b),
                                      ("K_MAX", self.k_max, K, lambda v, b: v <= b),
                                      ("N_MIN", self.n_min, N, lambda v, b: v >= b),
                                      ("N_MAX", self.n_max, N, lambda v, b: v <= b)):
            if bound is not None and not ok(value, bound):
                return f"{key}={bound} excludes {key[0]}={value}"
        return None


def k_tile_reason(block_k: int, problem: Problem) -> str | None:
    """The rule every kernel's K tile obeys: BLOCK_K % 8 == 0, >= 16, divides the group size and K."""
    if block_k % 8 or block_k < 16:
        return f"BLOCK_K={block_k} must be a multiple of 8 and at least 16"
    if block_k > problem.group_size or problem.group_size % block_k:
        return f"BLOCK_K={block_k} must divide the group size {problem.group_size} (one scale row per K tile)"
    if problem.K % block_k:
        return f"BLOCK_K={block_k} does not divide K={problem.K}"
    if problem.layout == "kplanes" and 128 % block_k and block_k % 128:
        return f"BLOCK_K={block_k} must divide 128 or be a multiple of it (kplanes permutes K in 128-row blocks)"
    return None


class KernelConfig(_Keyed):
    """Base of the per-kernel config dataclasses (subclasses are ``@dataclass(frozen=True)``)."""

    def check(self, launch: LaunchOptions, problem: Problem, shared_limit: int) -> str | None:
        """None if this config is legal for ``problem`` within ``shared_limit`` bytes, else why not."""
        raise NotImplementedError

    def shared_bytes(self, launch: LaunchOptions, act_bytes: int = 2) -> int:
        """Upper estimate of shared/LDS bytes (a pruning guide; check-target reads the real figure)."""
        return 0

    def _shared_reason(self, launch, problem: Problem, shared_limit: int) -> str | None:
        need = self.shared_bytes(launch, 4 if problem.act_dtype == "float32" else 2)
        if shared_limit and need > shared_limit:
            return f"needs ~{need} B of shared memory, target has {shared_limit} B"
        return None

    def constexprs(self) -> dict:
        """The config's fields as the kernel's constexpr arguments."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def label(self) -> str:
        """Short text for tables and explain: ``16x128x128 sk16 xperm``."""
        c = dict(self.items())
        tile = "x".join(str(c[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if k in c)
        rest = [f"sk{c['SPLIT_K']}"] if c.get("SPLIT_K", 1) != 1 else []
        rest += [k.lower() for k, v in c.items() if k not in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT_K",
                                                              "GROUP_M") and v == 1]
        return " ".join([tile] + rest)


@dataclasses.dataclass
class Operands:
    """The tensors of one launch (real ones, or meta tensors for the AOT signature)."""

    x: Any
    qweight: Any
    qzeros: Any
    scales: Any
    bias: Any
    out: Any
    workspace: Any = None
    tickets: Any = None
    dense: Any = None               # dequant-then-matmul: the dense [K, N] weight being written


def fused_arguments(o: Operands) -> tuple:
    """Positional run-time arguments of the fused kernels (GEMM and GEMV families).

    Absent optional tensors are replaced by another pointer of the right kind (never read: the kernel's
    HAS_ZEROS / HAS_BIAS / SPLIT_K constexprs switch the loads off)."""
    M, K = o.x.shape
    N = o.qweight.shape[1]
    return (o.x, o.qweight, o.qzeros if o.qzeros is not None else o.qweight, o.scales,
            o.bias if o.bias is not None else o.scales, o.out,
            o.workspace if o.workspace is not None else o.out, o.tickets if o.tickets is not None else o.out,
            M, N, K, o.x.stride(0), o.qweight.stride(0), o.qzeros.stride(0) if o.qzeros is not None else 0,
            o.scales.stride(0), o.out.stride(0))


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    """One launch, minus the tensors.  ``arguments(Operands)`` gives the positional arguments; the
    constexprs and launch options go as keywords (``kwargs``)."""

    kernel: str                                   # spec id
    fn: Any                                       # the @triton.jit function
    grid: tuple
    constexprs: dict
    options: dict
    arguments: Callable[[Operands], tuple]
    x_regroup: int = 0                            # > 0: regroup each K tile of x (BLOCK_K) plane by plane
    x_kplanes: int = 0                            # > 0: kplanes weight, K tiles of this BLOCK_K < 128: regroup x
                                                  # so each tile's columns come in its plane-major decode order
    workspace: tuple | None = None                # split-K / stripe: (fp32 elements, tile tickets)
    workspace_kind: str = "atomic"                # "atomic": zero-kept (split-K atomics); "slots": the stripe
                                                  # kernel's per-contributor slots (written before read)
    x_aligned: bool = False                       # fn copies x rows 16 bytes at a time (cp.async): the launcher
                                                  # gives it a copy of an x whose base is not 16-byte aligned
                                                  # or whose row stride is not a multiple of 16 elements
    dense_weight: bool = False                    # fn writes Operands.dense [K, N]; then torch matmul
    kwargs: dict = dataclasses.field(default_factory=dict, compare=False)
    # what the launcher (triton/launch.py) keeps between launches of this plan -- its compiled kernel; not
    # part of the plan's value
    runtime: dict = dataclasses.field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "kwargs", {**self.constexprs, **self.options})


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """One kernel.  ``config`` is its :class:`KernelConfig` class (None: not a Triton kernel, no table);
    ``plan(config, launch, problem, target, interpret) -> LaunchPlan`` imports the jit code lazily."""

    id: str
    description: str
    families: tuple[str, ...]                 # target families it runs on
    act_dtypes: tuple[str, ...]
    config: type | None = None
    plan: Callable | None = None
    m_max: int | None = None                  # largest M this kernel is meant for
    m_min: int | None = None                  # smallest M bucket (upper end) this kernel is meant for
    extra_check: Callable | None = None       # (problem, target) -> reason | None
    matrix_units: bool = False                # check-target fails a compile without matrix instructions
    layouts: tuple[str, ...] = ("standard",)  # the weight layouts its code reads (Problem.layout)
    interpretable: bool = True                # False: Triton's interpreter cannot run it (a Gluon kernel);
                                              # its numerics are tested on the GPU only

    @property
    def uses_triton(self) -> bool:
        return self.config is not None

    def reason(self, problem: Problem, target) -> str | None:
        """Why this kernel cannot take ``problem`` on ``target`` whatever its config (None: it can)."""
        reason = problem.basic_reason()
        if reason:
            return reason
        if target.family not in self.families:
            return f"runs on {'/'.join(self.families)} targets, not {target} ({target.family})"
        if self.uses_triton:
            reason = target.triton_support()
            if reason:
                return reason
        if problem.act_dtype not in self.act_dtypes:
            return f"takes {'/'.join(self.act_dtypes)} activations, not {problem.act_dtype}"
        if problem.layout not in self.layouts:
            return f"reads the {'/'.join(self.layouts)} layout, not the layer's {problem.layout}"
        if self.m_max is not None and (problem.m is None or problem.m > self.m_max):
            return f"serves M <= {self.m_max} only"
        if self.m_min is not None and problem.m is not None and problem.m < self.m_min:
            return f"serves M buckets from {self.m_min} up only (the fused kernels win below)"
        if self.extra_check is not None:
            return self.extra_check(problem, target)
        return None

    def parse(self, values: dict, where: str, *, backend: str | None, table: bool = True):
        """(config, launch options) from one table entry's keys (shape filters already removed)."""
        if self.config is None:
            raise TableError(f"{where}: {self.id} is not a Triton kernel and takes no config")
        lcls = launch_options_class(backend)
        # upper-case keys are the kernel's constexprs, lower-case ones launch options (of this backend)
        is_launch = lambda k: not k.isupper()       # noqa: E731
        launch = lcls.from_table({k: v for k, v in values.items() if is_launch(k)},
                                 f"{where} ({backend or 'any'} launch options)",
                                 require=lcls.TABLE_REQUIRED if table else ())
        cfg = self.config.from_table({k: v for k, v in values.items() if not is_launch(k)}, f"{where} ({self.id})")
        return cfg, launch


def plan_launch(spec: KernelSpec, config: KernelConfig, launch: LaunchOptions, problem: Problem, target, *,
                interpret: bool = False) -> LaunchPlan:
    """The launch of ``spec`` with ``config`` for ``problem`` (``problem.m``: the concrete M) on ``target``.

    Pure: the same answer for the launcher and the AOT compiler.  ``interpret``: Triton's interpreter runs
    the kernel (launch options are dropped; bf16 dots are upcast, the interpreter's bf16 dot is wrong)."""
    if spec.plan is None:
        raise ValueError(f"{spec.id} is not a Triton kernel")
    if problem.m is None:
        raise ValueError("plan_launch needs the concrete M: problem.with_m(M)")
    return spec.plan(config, launch, problem, target, interpret)
