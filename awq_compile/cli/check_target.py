"""``python -m awq_compile check-target TARGET``: prove, without the hardware, what the selector emits.

For every representative problem (K x N shapes, group sizes, activation dtypes, with zero points and
bias) the kernel selector (:func:`awq_compile.kernels.registry.select`) plans TARGET; every Triton
(kernel, config) it would run for the requested M values is compiled ahead of time for TARGET
(:mod:`awq_compile.kernels.aot`), identical compiles once.  The table shows registers, spills, LDS /
shared bytes and the matrix instructions found.  Exit status 1 when any compile fails, any register
spills, LDS / shared memory exceeds the target's limit, or a config of a matrix-unit kernel
(``KernelSpec.matrix_units``: ``triton_gemm``, ``triton_gemm_planes``) compiled without matrix
instructions; 0 otherwise, including targets the selector serves without Triton (the reason is printed).

Reports are cached on disk (:func:`awq_compile.kernels.aot.cache_dir`: ``$AWQ_COMPILE_AOT_CACHE``, default
``~/.cache/awq_compile/aot``), shared by every process of the user; the output says where the cache is
and how many reports came from it, and ``--no-cache`` compiles everything again.

Options::

    --shapes 4096x4096,4096x14336,14336x4096   K x N of the representative layers
    --group-sizes 32,128
    --m 1,2,4,...,4096                         M values (each picks its plan bucket)
    --dtypes float16,bfloat16
    --variants worst|all   worst (default): zero points and bias (the most registers);
                           all: every combination of zero points / bias
    --jobs N               compile workers (default: CPU count, at most 8)
    --no-cache             ignore the on-disk report cache
    --json PATH            also write the reports as JSON
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from ..target import CI_TARGETS

__all__ = ["main", "plan_requests", "evaluate", "Finding"]

# 4096x1024 (a GQA k/v projection): tables with N_MIN filters (sm90's stripe entries) plan other kernels there;
# 5120x13824 (Llama-2-13B's MLP): a class sm90 still plans the stripe kernel for (M 33..64) -- the measured
# classes (4096x4096 among them) went to its register-operand entries
DEFAULT_SHAPES = ((4096, 4096), (4096, 14336), (14336, 4096), (4096, 1024), (5120, 13824))
DEFAULT_GROUPS = (32, 128)
DEFAULT_M = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
DEFAULT_DTYPES = ("float16", "bfloat16")


@dataclasses.dataclass
class Finding:
    """One request's place in the table: where the selector uses it and what the compile found."""

    request: object
    uses: list = dataclasses.field(default_factory=list)   # "KxN g G M a..b"
    report: object = None
    problems: list = dataclasses.field(default_factory=list)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _shapes(text: str) -> tuple[tuple[int, int], ...]:
    out = []
    for part in text.split(","):
        if part.strip():
            k, n = part.lower().split("x")
            out.append((int(k), int(n)))
    return tuple(out)


def plan_requests(target, *, shapes=DEFAULT_SHAPES, group_sizes=DEFAULT_GROUPS, ms=DEFAULT_M,
                  dtypes=DEFAULT_DTYPES, variants="worst"):
    """(findings keyed by dedupe key, notes) for everything the selector emits for ``target``."""
    from ..kernels.aot import AotRequest
    from ..kernels.problem import Problem
    from ..kernels.registry import KERNELS, NoKernelError, select

    combos = [(True, True)] if variants == "worst" else [(z, b) for z in (True, False) for b in (True, False)]
    findings: dict[tuple, Finding] = {}
    notes: list[str] = []
    for (K, N) in shapes:
        for G in group_sizes:
            for dt in dtypes:
                for zeros, bias in combos:
                    problem = Problem(K, N, G, zeros, dt, has_bias=bias)
                    try:
                        plan = select(problem, target)
                    except NoKernelError as e:
                        notes.append(f"{K}x{N} g{G} {dt}: no kernel: {e.reasons}")
                        continue
                    for m in ms:
                        entry = plan.entry_for(m)
                        spec = KERNELS[entry.kernel]
                        if not spec.uses_triton:
                            note = f"{K}x{N} g{G} {dt} M={m}: {entry.kernel} (not Triton; nothing to compile)"
                            notes.append(note)
                            continue
                        req = AotRequest.make(entry.kernel, entry.config, target, launch=entry.launch,
                                              act_dtype=dt, group_size=G,
                                              has_zeros=zeros, has_bias=bias, K=K, N=N, layout=plan.layout)
                        f = findings.setdefault(req.dedupe_key(), Finding(req))
                        use = f"{K}x{N} g{G} M{m}"
                        if use not in f.uses:
                            f.uses.append(use)
    return findings, notes


def evaluate(report, target) -> list[str]:
    """Why ``report`` fails the check for ``target`` (empty: it passes)."""
    problems = []
    if not report.ok:
        first = report.error.strip().splitlines()[0] if report.error.strip() else "unknown error"
        return [f"compile failed: {first}"]
    if report.spills:
        kind = (f"{report.spills - report.sgpr_spills} VGPR + {report.sgpr_spills} SGPR registers"
                if target.backend == "hip" else f"{report.spills} bytes")
        problems.append(f"spills {kind}")
    limit = target.shared_memory
    if limit and report.shared > limit:
        problems.append(f"{'LDS' if target.backend == 'hip' else 'shared memory'} {report.shared} B exceeds "
                        f"the {limit} B limit")
    from ..kernels.registry import KERNELS

    if report.kernel in KERNELS and KERNELS[report.kernel].matrix_units and not report.has_matrix:
        problems.append(f"{report.kernel} compiled without matrix instructions ({target.matrix_unit} expected)")
    return problems


def _fmt_config(report) -> str:
    """The config as explain shows it (``16x128x128 sk16 xperm w4 st3``)."""
    from ..kernels.registry import KERNELS, PlanEntry
    from ..target import Target

    cfg, launch = KERNELS[report.kernel].parse(report.config_dict, report.kernel,
                                               backend=Target.parse(report.target).backend, table=False)
    return PlanEntry(None, report.kernel, cfg, launch).label().split(" ", 1)[1]


def _fmt_matrix(report) -> str:
    if not report.matrix_instructions:
        return "-"
    total = sum(n for _, n in report.matrix_instructions)
    names = sorted({name.split(".")[0] if name.startswith(("mma", "wgmma", "tcgen05")) else name
                    for name, _ in report.matrix_instructions})
    return f"{','.join(names)} x{total}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m awq_compile check-target",
                                     description="Compile every (kernel, config) the selector emits for a "
                                                 "target ahead of time and check registers, spills, LDS and "
                                                 "matrix instructions.")
    parser.add_argument("target", help="the GPU to check, e.g. hip:gfx942, hip:gfx1100, cuda:sm90 (CI checks: "
                        + ", ".join(CI_TARGETS) + ")")
    parser.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in DEFAULT_SHAPES), metavar="KxN,...",
                        help="K x N of the representative layers to plan (default: %(default)s)")
    parser.add_argument("--group-sizes", default=",".join(map(str, DEFAULT_GROUPS)), metavar="G,...",
                        help="quantisation group sizes to plan (default: %(default)s)")
    parser.add_argument("--m", default=",".join(map(str, DEFAULT_M)), metavar="M,...",
                        help="batch sizes; each selects its plan bucket (default: %(default)s)")
    parser.add_argument("--dtypes", default=",".join(DEFAULT_DTYPES), metavar="DTYPE,...",
                        help="activation dtypes (default: %(default)s)")
    parser.add_argument("--variants", choices=("worst", "all"), default="worst",
                        help="worst: with zero points and bias, the most registers (default); all: every "
                             "combination of zero points and bias")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="parallel compile workers (default: CPU count, at most 8)")
    parser.add_argument("--no-cache", action="store_true",
                        help="compile everything again instead of reading reports cached on disk "
                             "($AWQ_COMPILE_AOT_CACHE, default ~/.cache/awq_compile/aot; 'off' disables it)")
    parser.add_argument("--json", dest="json_path", default=None, metavar="PATH",
                        help="also write every report, with where it is used, as JSON to PATH")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only failures and the summary")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)

    from ..kernels.aot import cache_dir, compile_many
    from ..target import Target

    try:
        target = Target.parse(args.target)
    except ValueError as e:
        print(f"check-target: {e}", file=sys.stderr)
        return 2
    why_not = target.triton_support()
    print(f"check-target {target}: wave {target.warp_size}, "
          f"{'LDS' if target.backend == 'hip' else 'shared'} limit {target.shared_memory} B, "
          f"matrix unit {target.matrix_unit}")
    start = time.perf_counter()
    findings, notes = plan_requests(target, shapes=_shapes(args.shapes), group_sizes=_ints(args.group_sizes),
                                    ms=_ints(args.m), dtypes=tuple(d for d in args.dtypes.split(",") if d),
                                    variants=args.variants)
    if not findings:
        reason = why_not or "the selector chose no Triton kernel for these problems"
        print(f"nothing to compile: {reason}")
        for note in sorted(set(notes))[:10]:
            print(f"  {note}")
        return 0
    items = list(findings.values())
    reports = compile_many([f.request for f in items], jobs=args.jobs, use_cache=not args.no_cache)
    failed = 0
    rows = []
    for f, rep in zip(items, reports):
        f.report = rep
        f.problems = evaluate(rep, target)
        failed += bool(f.problems)
        regs = str(rep.registers) + (f"+{rep.agprs}a" if rep.agprs else "")
        rows.append((rep.kernel, _fmt_config(rep), rep.act_dtype.replace("float", "f").replace("bf", "bf"),
                     f"g{rep.group_size}", regs, str(rep.spills), str(rep.shared), _fmt_matrix(rep),
                     "FAIL: " + "; ".join(f.problems) if f.problems else "ok" + (" (cached)" if rep.cached else "")))
    header = ("kernel", "config", "dtype", "group", "regs", "spills", "lds/smem", "matrix", "status")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join("{:<%d}" % w for w in widths)
    if not args.quiet:
        print(line.format(*header))
    for r, f in zip(rows, items):
        if not args.quiet or f.problems:
            print(line.format(*r))
            if f.problems and f.report.error:
                print("    " + f.report.error.strip().replace("\n", "\n    ")[:1500])
    fresh = sum(not f.report.cached for f in items)
    folder = None if args.no_cache else cache_dir()
    where = (f"report cache {folder} (AWQ_COMPILE_AOT_CACHE; shared by every process of this user, "
             "--no-cache recompiles)" if folder is not None else "report cache off")
    print(f"{len(items)} distinct compiles ({fresh} compiled, {len(items) - fresh} cached) for "
          f"{sum(len(f.uses) for f in items)} (problem, M) uses in {time.perf_counter() - start:.1f}s; "
          f"{failed} failing; {where}")
    non_triton = sorted({n.split(": ", 1)[1] for n in notes if ": " in n})
    for n in non_triton[:5]:
        print(f"note: some buckets use {n}")
    if args.json_path:
        with open(args.json_path, "w") as fh:
            json.dump({"target": str(target), "failing": failed,
                       "reports": [dict(f.report.to_json(), uses=f.uses, problems=f.problems) for f in items]},
                      fh, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
