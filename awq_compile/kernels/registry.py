"""Kernel registry and selection: a pure function of (problem, target), and the rule for other devices.

The kernels are the specs of :mod:`.specs` (one module each).  Each target family has a priority list of
*slots* (:data:`PRIORITY`); a Triton slot is a section of the tuning tables whose entries name the kernel
they run (the slot's own by default), a non-Triton slot is that kernel itself.  :func:`select` walks the
M buckets and takes, for each, the first entry of the first slot that can implement the problem -- the
kernel's static checks (family, Triton support, dtype, M range), the entry's shape filter, then the
config's pruning rule -- and returns a :class:`Plan`: the M -> (kernel, config, launch options) table the
custom op consults at run time, stamped with the target it was made for.  Nothing here looks at the host
or imports Triton: asking about ``hip:gfx942`` on a CPU-only machine gives the answer an MI300 would get.

The weight layout is part of the plan (:func:`choose_layout`): ``kplanes`` where the target's table asks
for it (``"layout"`` in a version table, :func:`~.configs.layout_for`) and the shape allows it, else
``standard`` with the reason in :attr:`Plan.layout_note`; every entry of the plan reads that layout.

The device rule (:func:`plan_for_device`): a plan runs only on a device of the target family it was made
for.  On a device of another family (a ``hip:gfx942`` plan meeting CPU or NVIDIA tensors) the plan is made
again for the device's target, with the same forced/disabled kernels, and the caller warns once naming the
layer -- never a silent run of another target's configs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

from ..target import Target
from . import configs as _configs
from .problem import Problem
from .spec import KernelConfig, LaunchOptions, TableError, launch_options_class
from .specs import all_specs

__all__ = ["KERNELS", "PRIORITY", "Plan", "PlanEntry", "NoKernelError", "select", "kernels_for", "M_BUCKETS",
           "plan_for_device", "choose_layout"]

# Upper ends of the M buckets a plan distinguishes (None: everything larger).
M_BUCKETS: tuple[int | None, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, None)


class _Kernels(Mapping):
    """{kernel id: KernelSpec}, collected from :mod:`.specs` on first use."""

    def __getitem__(self, key):
        return all_specs()[key]

    def __iter__(self):
        return iter(all_specs())

    def __len__(self):
        return len(all_specs())


KERNELS: Mapping = _Kernels()

PRIORITY: dict[str, tuple[str, ...]] = {
    "cuda": ("triton_gemv", "triton_dequant_mm", "triton_gemm", "torch_dequant"),
    "cdna": ("triton_gemv", "triton_gemm", "torch_dequant"),
    "rdna": ("triton_gemv", "triton_gemm", "torch_dequant"),
    "cpu": ("cpu_int4pack", "torch_dequant"),
}


def kernels_for(target: Target) -> tuple[str, ...]:
    """The target family's slots in priority order."""
    return PRIORITY.get(target.family, ("torch_dequant",))


@dataclasses.dataclass(frozen=True)
class PlanEntry:
    """M up to ``m_max`` (None: any larger M) runs ``kernel`` with ``config`` and ``launch`` options."""

    m_max: int | None
    kernel: str
    config: KernelConfig | None = None
    launch: LaunchOptions | None = None

    @property
    def config_dict(self) -> dict:
        """Config and launch options as table keys (what a table entry for it would say)."""
        return dict((self.config.items() if self.config else ()) + (self.launch.items() if self.launch else ()))

    def label(self) -> str:
        """``triton_gemm_planes 16x128x128 sk16 xperm w4 st3``: the kernel that runs, with its config."""
        if self.config is None:
            return self.kernel
        opts = [f"{_SHORT.get(k, k)}{v}" for k, v in (self.launch.items() if self.launch else ())]
        return " ".join([self.kernel, self.config.label()] + opts)


_SHORT = {"num_warps": "w", "num_stages": "st", "waves_per_eu": "wpe", "matrix_instr_nonkdim": "nk", "kpack": "kp",
          "maxnreg": "nreg"}


def _encode_entry(e: PlanEntry) -> str:
    cfg = ",".join(f"{k}={v}" for k, v in e.config_dict.items())
    return f"{'*' if e.m_max is None else e.m_max}:{e.kernel}" + (f":{cfg}" if cfg else "")


@dataclasses.dataclass(frozen=True)
class Plan:
    """M-bucketed kernel choices for one problem on ``target``; ``rejected`` maps every kernel that is not
    used to why; ``force``/``disabled`` are the selection options it was made with."""

    entries: tuple[PlanEntry, ...]
    rejected: tuple[tuple[str, str], ...] = ()
    target: Target | None = None
    force: str | None = None
    disabled: tuple[str, ...] = ()
    layout: str = "standard"           # the packed layout every entry reads (the weight cache prepares it)
    layout_note: str = ""              # how the layout was decided (why standard where a table asked kplanes)

    def entry_for(self, m: int) -> PlanEntry:
        for e in self.entries:
            if e.m_max is None or m <= e.m_max:
                return e
        return self.entries[-1]

    @property
    def kernels(self) -> tuple[str, ...]:
        seen = []
        for e in self.entries:
            if e.kernel not in seen:
                seen.append(e.kernel)
        return tuple(seen)

    def encode(self) -> str:
        """Compact text carried by the custom op's ``plan`` argument (readable in graph dumps)::

            @target=hip:gfx942;1:triton_gemv:BLOCK_M=1,BLOCK_N=128,...,num_warps=4,num_stages=2;*:triton_gemm:...
        """
        head = []
        if self.target is not None:
            head.append(f"@target={self.target}")
        if self.force:
            head.append(f"@force={self.force}")
        if self.disabled:
            head.append(f"@disabled={','.join(self.disabled)}")
        if self.layout != "standard":
            head.append(f"@layout={self.layout}")
        return ";".join(head + [_encode_entry(e) for e in self.entries])

    @staticmethod
    @functools.lru_cache(maxsize=1024)
    def decode(text: str) -> "Plan":
        """The plan of :meth:`encode`'s text; raises TableError naming the part it cannot read."""
        head: dict = {}
        entries = []
        for part in text.split(";"):
            if part.startswith("@"):
                key, _, value = part[1:].partition("=")
                if key not in ("target", "force", "disabled", "layout"):
                    raise TableError(f"plan {text!r}: unknown header {part!r}")
                head[key] = value
                continue
            bits = part.split(":", 2)
            if len(bits) < 2:
                raise TableError(f"plan {text!r}: cannot read entry {part!r} (expected 'M:kernel[:k=v,...]')")
            m_max = None if bits[0] == "*" else int(bits[0])
            kernel = bits[1]
            if kernel not in KERNELS:
                raise TableError(f"plan {text!r}: unknown kernel {kernel!r}; known: {sorted(KERNELS)}")
            values = {}
            if len(bits) == 3 and bits[2]:
                values = {k: int(v) for k, v in (kv.split("=") for kv in bits[2].split(","))}
            spec = KERNELS[kernel]
            layout = head.get("layout", "standard")
            if layout not in spec.layouts:
                raise TableError(f"plan {text!r}: {kernel} reads the {'/'.join(spec.layouts)} layout, not {layout}")
            cfg = launch = None
            if spec.uses_triton:
                target = Target.parse(head["target"]) if "target" in head else None
                backend = target.backend if target is not None else (
                    "hip" if set(values) & set(launch_options_class("hip").table_keys()) - {"num_warps",
                                                                                            "num_stages"} else None)
                cfg, launch = spec.parse(values, f"plan {text!r} entry {part!r}", backend=backend, table=False)
            elif values:
                raise TableError(f"plan {text!r}: {kernel} takes no config, got {values}")
            entries.append(PlanEntry(m_max, kernel, cfg, launch))
        if not entries or entries[-1].m_max is not None:
            raise ValueError(f"plan {text!r} must end with an open bucket '*:'")
        return Plan(tuple(entries), target=Target.parse(head["target"]) if "target" in head else None,
                    force=head.get("force") or None,
                    disabled=tuple(d for d in head.get("disabled", "").split(",") if d),
                    layout=head.get("layout", "standard"))

    def buckets(self) -> tuple[tuple[str, PlanEntry], ...]:
        """(``"lo..hi"``, entry) per M bucket (``hi`` empty for the open bucket)."""
        out, lo = [], 1
        for e in self.entries:
            out.append((f"{lo}..{'' if e.m_max is None else e.m_max}", e))
            lo = (e.m_max or 0) + 1
        return tuple(out)

    def describe(self) -> str:
        """``M 1..4: triton_gemv 1x128x128 sk8 w4 st2; M 5..inf: ...`` -- the kernel that runs, with its config."""
        text = "; ".join(f"M {rng}{'inf' if rng.endswith('..') else ''}: {e.label()}" for rng, e in self.buckets())
        return text if self.layout == "standard" else f"weights {self.layout}; {text}"


class NoKernelError(RuntimeError):
    def __init__(self, problem: Problem, target: Target, reasons: dict[str, str]):
        self.reasons = reasons
        lines = "\n".join(f"  {k}: {r}" for k, r in reasons.items())
        super().__init__(f"no kernel can implement {problem} on {target}:\n{lines}")


def _slot_entries(slot: str, problem: Problem, target: Target, triton_version):
    """(source label, candidates) for one slot: table entries for a Triton slot, the kernel itself else."""
    spec = KERNELS[slot]
    if not spec.uses_triton:
        return slot, (_configs.Candidate(slot, None, None),)
    return _configs.candidates(target.arch, target.family, slot, problem.m, triton_version)


def choose_layout(problem: Problem, target: Target, *, force: str | None = None, layout: str | None = None,
                  triton_version: str | None = None) -> tuple[str, str]:
    """(layout, note): the layout the target's tables ask for (or ``layout``, when the caller fixes it)
    when the problem's shape has it and a forced kernel reads it; else ``standard``, the note saying why."""
    if layout is None:
        wanted, source = _configs.layout_for(target.arch, target.family, triton_version)
    else:
        wanted, source = layout, "requested"
    if wanted == "standard":
        return "standard", "" if layout is None else "standard (requested)"
    why = problem.with_layout(wanted).basic_reason()
    if why is None and force and wanted not in KERNELS[force].layouts:
        why = f"the forced kernel {force} reads the {'/'.join(KERNELS[force].layouts)} layout only"
    if why:
        return "standard", f"{source} asks for {wanted}, standard instead: {why}"
    return wanted, f"{wanted} ({source})"


def select(problem: Problem, target: Target, *, force: str | None = None, disabled: tuple[str, ...] = (),
           triton_version: str | None = None, layout: str | None = None) -> Plan:
    """The plan for ``problem`` on ``target``; raises :class:`NoKernelError` listing every refusal.

    ``layout``: the weight layout to plan for (None: the target's tables decide, :func:`choose_layout`)."""
    layout, layout_note = choose_layout(problem, target, force=force, layout=layout,
                                        triton_version=triton_version)
    problem = problem.with_layout(layout)
    slots = kernels_for(target)
    if force:
        if force not in KERNELS:
            raise ValueError(f"unknown kernel {force!r}; known: {sorted(KERNELS)}")
        if force not in slots and any(force in p for p in PRIORITY.values()):
            slots = (force,)           # a slot of another family: its own refusal says why
    disabled = tuple(disabled)
    entries: list[PlanEntry] = []
    first_refusal: dict[str, str] = {}
    seen: list[str] = []               # kernels met, in order (for ``rejected``)

    def refuse(kid, why):
        first_refusal.setdefault(kid, why)

    for m in M_BUCKETS:
        p = problem.with_m(m)
        chosen = None
        for slot in slots:
            slot_spec = KERNELS[slot]
            if slot not in seen and (not force or force == slot):
                seen.append(slot)
            if force and slot != force and not slot_spec.uses_triton:
                continue
            if slot in disabled and not slot_spec.uses_triton:
                refuse(slot, "disabled by option (disabled_kernels / AWQ_COMPILE_DISABLED_KERNELS)")
                continue
            why = slot_spec.reason(p, target)
            if why:
                refuse(slot, why)
                continue
            source, cands = _slot_entries(slot, p, target, triton_version)
            if force:
                cands = tuple(c for c in cands if c.kernel == force)
                if not cands:
                    if slot == force:
                        refuse(force, f"no tuned config for M bucket {m} in {source}")
                    continue
            if not cands:
                refuse(slot, f"no tuned config for M bucket {m} in {source}")
                continue
            drops = []
            for c in cands:
                spec = KERNELS[c.kernel]
                if c.kernel not in seen:
                    seen.append(c.kernel)
                if c.kernel in disabled:
                    why = "disabled by option (disabled_kernels / AWQ_COMPILE_DISABLED_KERNELS)"
                elif c.kernel != slot:
                    why = spec.reason(p, target)
                else:
                    why = None
                if why is None and c.config is not None:
                    why = c.shapes.reason(p.K, p.N) or c.config.check(c.launch, p, target.shared_memory)
                if why is None:
                    chosen = PlanEntry(m, c.kernel, c.config, c.launch)
                    break
                if c.kernel in disabled or c.kernel != slot:
                    refuse(c.kernel, why)
                drops.append(why)
            if chosen is not None:
                break
            if c.config is None:
                refuse(slot, drops[0])
            else:
                refuse(slot if not force else force, f"every config in {source} was pruned: {drops[0]}")
        if chosen is None:
            names = (force,) if force else slots
            reasons = {k: first_refusal.get(k, "not tried") for k in names}
            raise NoKernelError(p, target, reasons)
        last = entries[-1] if entries else None
        if last is not None and (last.kernel, last.config, last.launch) == (chosen.kernel, chosen.config,
                                                                            chosen.launch):
            entries[-1] = chosen
        else:
            entries.append(chosen)
    used = {e.kernel for e in entries}
    rejected = tuple((kid, first_refusal.get(kid, "lower priority: the kernels above cover every M"))
                     for kid in seen if kid not in used)
    return Plan(tuple(entries), rejected, target=target, force=force or None, disabled=disabled, layout=layout,
                layout_note=layout_note)


def _runs_on(plan: Plan, target: Target) -> bool:
    if plan.target is not None:
        return plan.target.family == target.family
    # a plan written without a target (by hand, in a test): every kernel must run on this family
    return all(target.family in KERNELS[e.kernel].families for e in plan.entries)


def plan_for_device(plan: Plan, device_target: Target, problem: Problem) -> tuple[Plan, str | None]:
    """The rule for a plan meeting a device: ``(plan, None)`` when the device is of the family the plan
    was made for; otherwise ``(new plan for device_target, message)`` -- made with the plan's forced and
    disabled kernels (the force is dropped, and the message says so, when that kernel cannot run there)."""
    if _runs_on(plan, device_target):
        return plan, None
    made_for = plan.target if plan.target is not None else f"kernels {', '.join(plan.kernels)}"
    base = problem.with_m(None)
    note = ""
    try:
        new = select(base, device_target, force=plan.force, disabled=plan.disabled)
    except NoKernelError:
        if not plan.force:
            raise
        new = select(base, device_target, disabled=plan.disabled)
        note = f" (the forced kernel {plan.force} cannot run there)"
    return new, (f"the plan was made for {made_for} but the tensors are on a {device_target} device "
                 f"({device_target.family} family); re-planned for {device_target}{note}: {new.describe()}")
