"""Ahead-of-time compilation of one (kernel, config) for a :class:`~awq_compile.target.Target`.

Triton compiles for a ``GPUTarget`` without the GPU being present, so a CPU machine can answer, for an
MI300 or an RX 7900 it does not have: does this config compile, how many registers does it use, does
it spill, how much shared memory / LDS does it take, and did ``tl.dot`` become matrix instructions
(``v_mfma`` / ``v_wmma`` on AMD, ``mma.sync`` / ``wgmma`` / ``tcgen05`` on NVIDIA)?

:func:`compile_report` answers for one request, :func:`compile_many` for a batch (deduplicated, in
parallel worker processes).  Reports are cached on disk as small JSON records (not binaries) under
``$AWQ_COMPILE_AOT_CACHE`` (default ``$XDG_CACHE_HOME/awq_compile/aot`` or ``~/.cache/awq_compile/aot``;
``off`` disables it), keyed by a hash of the kernel code's source (``kernels/triton/``, ``kernels/specs/``,
``kernels/spec.py``), the Triton version, the target, the config, the activation dtype and the
specialisation, so a repeated ``check-target`` is instant and any kernel edit invalidates exactly the
records built from the old source.  Failed compiles are not cached.  Records are shared by every process
of the user (another checkout, CI job or terminal may have filled them): ``check-target`` prints where.

What to compile comes from :func:`~awq_compile.kernels.spec.plan_launch` -- the same pure function the
run-time launcher uses -- and the argument types from the plan's own argument builder applied to meta
tensors of the request's shapes, so nothing here imports or patches the kernel modules' globals.

The compile mimics what a launch on the device specialises: pointers 16-byte aligned, integer arguments
divisible by 16 marked as such (from the representative K and N), AMD buffer-op pointer ranges when
Triton uses them, and the config's launch options (``num_warps``, ``num_stages`` and, on AMD only,
``waves_per_eu`` / ``matrix_instr_nonkdim`` / ``kpack``).

Compiles run in a child process whose environment has no ``TRITON_INTERPRET`` whenever this process
runs Triton's interpreter (the decorator then yields interpreter objects that cannot be compiled), so
the same call works from an interpreter-mode test session.  Works with Triton 3.6 and 3.9
(``ASTSource(fn, signature, constexprs, attrs)``, ``GPUTarget(backend, arch, warp_size)``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..target import Target, interpreter_active
from .problem import Problem
from .spec import KernelConfig, Operands, plan_launch
from .specs import get_spec

__all__ = ["AotRequest", "AotReport", "compile_report", "compile_many", "cache_dir", "MATRIX_PATTERNS",
           "SCHEMA"]

SCHEMA = 3  # bump when the report's fields or their meaning change

# Matrix-unit instruction mnemonics as they appear in the assembly, per backend.
MATRIX_PATTERNS = {
    "hip": re.compile(r"\b(v_mfma\w*|v_smfmac\w*|v_wmma\w*|v_swmmac\w*)"),
    "cuda": re.compile(r"\b(mma\.sync[\w.]*|wgmma\.mma_async[\w.]*|tcgen05\.mma[\w.]*)"),
}

_ACT_DTYPES = ("float16", "bfloat16", "float32")


@dataclasses.dataclass(frozen=True)
class AotRequest:
    """One compile: a Triton kernel id, its config, the target and the specialisation."""

    kernel: str
    config: tuple                   # sorted (table key, value) pairs: the kernel's config and launch options
    target: str
    act_dtype: str = "float16"
    group_size: int = 128
    has_zeros: bool = True
    has_bias: bool = False
    K: int = 4096
    N: int = 4096
    layout: str = "standard"        # the weight layout the plan prepared (Problem.layout: KPLANES constexprs)

    @classmethod
    def make(cls, kernel: str, config, target, *, launch=None, **kw) -> "AotRequest":
        """``config``: a :class:`~.spec.KernelConfig` (with ``launch`` options), or table keys (validated)."""
        target = Target.parse(target)
        if isinstance(config, KernelConfig):
            pairs = config.items() + (launch.items() if launch is not None else ())
        else:
            cfg, opts = get_spec(kernel).parse(dict(config), f"aot request for {kernel}",
                                               backend=target.backend, table=False)
            pairs = cfg.items() + opts.items()
        return cls(kernel, tuple(sorted(pairs)), str(target), **kw)

    def problem(self) -> Problem:
        return Problem(self.K, self.N, self.group_size, self.has_zeros, self.act_dtype, has_bias=self.has_bias,
                       m=3, layout=self.layout)

    def _ints(self) -> dict:
        """Representative integer arguments (their divisibility by 16 is what the compile sees)."""
        K, N = self.K, self.N
        return {"M": 3, "N": N, "K": K, "stride_xm": K, "stride_qk": N, "stride_zg": N // 8 if self.has_zeros else 0,
                "stride_sg": N, "stride_om": N, "stride_wk": N}

    def dedupe_key(self) -> tuple:
        """Requests with equal keys compile to the same binary (K and N matter only by divisibility)."""
        div = tuple(sorted((k, v % 16 == 0) for k, v in self._ints().items()))
        return (self.kernel, self.config, self.target, self.act_dtype, self.group_size, self.has_zeros,
                self.has_bias, div, self.layout)


@dataclasses.dataclass(frozen=True)
class AotReport:
    """What one ahead-of-time compile produced.

    ``registers``: VGPRs per lane on AMD, registers per thread on NVIDIA.  ``spills``: on AMD spilled
    VGPRs + SGPRs (``sgpr_spills`` says how many were SGPRs), on NVIDIA spilled bytes (stores + loads)
    -- either way 0 is the only good value.  ``shared``: LDS / shared-memory bytes per block.
    """

    kernel: str
    config: tuple
    target: str
    act_dtype: str
    group_size: int
    has_zeros: bool
    has_bias: bool
    ok: bool
    error: str = ""
    registers: int = 0
    agprs: int = 0                   # CDNA accumulation registers (0 elsewhere)
    sgprs: int = 0
    spills: int = 0
    sgpr_spills: int = 0
    scratch: int = 0                 # private / stack bytes per thread
    shared: int = 0
    occupancy: int = 0               # AMD: waves per SIMD the compiler reports (0: unknown)
    matrix_instructions: tuple = ()  # ((mnemonic, count), ...)
    seconds: float = 0.0
    cached: bool = False

    @property
    def config_dict(self) -> dict:
        return dict(self.config)

    @property
    def has_matrix(self) -> bool:
        return bool(self.matrix_instructions)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["config"] = [list(kv) for kv in self.config]
        d["matrix_instructions"] = [list(kv) for kv in self.matrix_instructions]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "AotReport":
        d = dict(d)
        d["config"] = tuple(tuple(kv) for kv in d["config"])
        d["matrix_instructions"] = tuple(tuple(kv) for kv in d["matrix_instructions"])
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


def cache_dir() -> Path | None:
    """Where reports are cached; None when ``AWQ_COMPILE_AOT_CACHE`` is ``off``/``0``/``none``/empty."""
    env = os.environ.get("AWQ_COMPILE_AOT_CACHE")
    if env is not None:
        if env.strip().lower() in ("", "0", "off", "none", "false"):
            return None
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "awq_compile" / "aot"


def _interpreting() -> bool:
    return interpreter_active()


def _triton_version() -> str:
    try:
        from importlib.metadata import version

        return version("triton")
    except Exception:
        import triton

        return triton.__version__


def _source_hash() -> str:
    """Hash of every source file that decides what is compiled: the jit code and the launch planning."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted([root / "spec.py", *root.glob("triton/*.py"), *root.glob("specs/*.py")]):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _cache_key(req: AotRequest, source_hash: str, triton_version: str) -> str:
    buffer_ops = os.environ.get("AMDGCN_USE_BUFFER_OPS", "")
    payload = json.dumps([SCHEMA, source_hash, triton_version, buffer_ops, list(req.dedupe_key())], default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


# ----------------------------------------------------------------------------------------- compile
_TORCH_TYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "int32": "i32", "int64": "i64",
                "int8": "i8", "uint8": "u8", "bool": "i1"}


def _planned(req: AotRequest):
    """(jit function, {arg: value}, constexprs, launch options) of the launch the run time would make.

    The launch plan comes from :func:`~.spec.plan_launch` for the request's problem (M = 3); its argument
    builder runs on meta tensors of the request's shapes, so argument types are exactly a real call's."""
    import torch

    spec = get_spec(req.kernel)
    if spec.plan is None:
        raise ValueError(f"{req.kernel!r} is not a Triton kernel")
    target = Target.parse(req.target)
    cfg, launch = spec.parse(dict(req.config), f"aot request for {req.kernel}", backend=target.backend,
                             table=False)
    problem = req.problem()
    plan = plan_launch(spec, cfg, launch, problem, target, interpret=False)
    dt = getattr(torch, req.act_dtype)
    K, N, G, M = req.K, req.N, req.group_size, problem.m
    meta = dict(device="meta")
    x = torch.empty((M, K), dtype=dt, **meta)
    qw = torch.empty((K // 8, N), dtype=torch.int32, **meta)
    qz = torch.empty((K // G, N // 8), dtype=torch.int32, **meta) if req.has_zeros else None
    sc = torch.empty((K // G, N), dtype=dt, **meta)
    bias = torch.empty((N,), dtype=dt, **meta) if req.has_bias else None
    out = torch.empty((M, N), dtype=dt, **meta)
    ops = Operands(x, qw, qz, sc, bias, out)
    if plan.workspace is not None:
        ops.workspace = torch.empty((plan.workspace[0],), dtype=torch.float32, **meta)
        ops.tickets = torch.empty((plan.workspace[1],), dtype=torch.int32, **meta)
    if plan.dense_weight:
        ops.dense = torch.empty((K, N), dtype=dt, **meta)
    fn = plan.fn
    values = dict(zip(fn.arg_names, plan.arguments(ops)))
    constexprs = dict(plan.constexprs)
    for p in fn.params:
        if p.name not in values and p.name not in constexprs and p.is_constexpr and getattr(p, "has_default", False):
            constexprs[p.name] = p.default
    for p in fn.params:  # constexprs passed positionally
        if p.is_constexpr and p.name in values:
            constexprs[p.name] = values.pop(p.name)
    return fn, values, constexprs, plan.options


def _signature(fn, values: dict, constexprs: dict) -> tuple[dict, dict]:
    """(Triton signature, representative integer values) from the recorded arguments."""
    sig, ints = {}, {}
    for p in fn.params:
        if p.name in constexprs:
            sig[p.name] = "constexpr"
            continue
        v = values.get(p.name)
        if hasattr(v, "dtype") and hasattr(v, "data_ptr"):
            sig[p.name] = "*" + _TORCH_TYPES[str(v.dtype).removeprefix("torch.")]
        elif isinstance(v, bool):
            sig[p.name] = "i1"
        elif isinstance(v, int):
            sig[p.name] = "i32" if -2**31 <= v < 2**31 else "i64"
            ints[p.name] = v
        elif isinstance(v, float):
            sig[p.name] = "fp32"
        elif v is None:
            sig[p.name] = "constexpr"
            constexprs[p.name] = None
        else:
            raise ValueError(f"aot: cannot type argument {p.name}={v!r}")
    return sig, ints


def _attrs(backend, target: Target, sig: dict, ints: dict) -> dict:
    def parse(desc):
        try:
            return backend.parse_attr(desc)
        except AttributeError:  # a Triton without parse_attr
            return [["tt.divisibility", 16]] if "D" in desc else []

    buffer_ops = False
    if target.backend == "hip":
        try:
            from triton import knobs

            buffer_ops = bool(knobs.amd.use_buffer_ops)
        except Exception:
            buffer_ops = False
    attrs = {}
    for i, (name, ty) in enumerate(sig.items()):
        if ty == "constexpr":
            continue
        if ty.startswith("*"):
            desc = "D" + ("S" if buffer_ops else "")
        else:
            v = ints.get(name)
            desc = "D" if v is not None and v % 16 == 0 else ""
        parsed = parse(desc) if desc else []
        if parsed:
            attrs[(i,)] = parsed
    return attrs


def _tool(name: str) -> str | None:
    try:
        from triton import knobs

        return getattr(knobs.nvidia, name.replace("-", "_")).path
    except Exception:
        pass
    import triton

    p = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(p) if p.exists() else shutil.which(name)


def _amd_stats(asm: str) -> dict:
    def first(key):
        m = re.search(r"\." + key + r":\s+(\d+)", asm)
        return int(m.group(1)) if m else 0

    scratch = re.search(r";\s*ScratchSize:\s*(\d+)", asm)
    occ = re.search(r";\s*Occupancy:\s*(\d+)", asm)
    sgpr_spills = first("sgpr_spill_count")
    return dict(registers=first("vgpr_count"), agprs=first("agpr_count"), sgprs=first("sgpr_count"),
                spills=first("vgpr_spill_count") + sgpr_spills, sgpr_spills=sgpr_spills,
                scratch=int(scratch.group(1)) if scratch else first("private_segment_fixed_size"),
                occupancy=int(occ.group(1)) if occ else 0)


def _cuda_stats(compiled) -> dict:
    """Registers and stack of the real cubin (cuobjdump); spill bytes from ``ptxas -v`` when it has a stack."""
    stats = dict(registers=0, spills=0, scratch=0)
    cubin = compiled.asm.get("cubin")
    dump = _tool("cuobjdump")
    if cubin and dump:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "k.cubin")
            with open(path, "wb") as f:
                f.write(cubin)
            out = subprocess.run([dump, "-res-usage", path], capture_output=True, text=True, check=True).stdout
        m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:\d+\s+LOCAL:(\d+)", out)
        if m:
            stats.update(registers=int(m.group(1)), scratch=int(m.group(2)) + int(m.group(3)))
    if stats["scratch"] or not stats["registers"]:
        ptxas = _ptxas_stats(compiled.asm["ptx"])
        stats.update(ptxas)
        if stats["scratch"] and not stats["spills"]:
            stats["spills"] = stats["scratch"]  # a stack in a Triton kernel is spill space
    return stats


def _ptxas_stats(ptx: str) -> dict:
    target = re.search(r"^\.target\s+(sm_\w+)", ptx, re.M)
    arch = target.group(1) if target else "sm_80"
    num = int(re.match(r"sm_(\d+)", arch).group(1))
    ptxas = (_tool("ptxas-blackwell") if num >= 90 else None) or _tool("ptxas")
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        log = subprocess.run([ptxas, "-v", f"--gpu-name={arch}", src, "-o", os.path.join(d, "k.o")],
                             capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    out = {"spills": int(spill.group(1)) + int(spill.group(2)) if spill else 0}
    if regs:
        out["registers"] = int(regs.group(1))
    if stack:
        out["scratch"] = int(stack.group(1))
    return out


def _matrix(asm: str, backend: str) -> tuple:
    counts: dict[str, int] = {}
    for m in MATRIX_PATTERNS[backend].finditer(asm):
        counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return tuple(sorted(counts.items()))


def _base(req: AotRequest) -> dict:
    return dict(kernel=req.kernel, config=req.config, target=req.target, act_dtype=req.act_dtype,
                group_size=req.group_size, has_zeros=req.has_zeros, has_bias=req.has_bias)


def compile_request(req: AotRequest, *, m: int | None = None):
    """Triton's compiled kernel for ``req`` (all its stages' text in ``.asm``); ``m`` specialises the launch's
    M argument (None: the planned problem's own).  Raises what the compiler raises."""
    import triton
    from triton.compiler import ASTSource, make_backend

    target = Target.parse(req.target)
    fn, values, constexprs, options = _planned(req)
    if m is not None:
        values["M"] = m
    sig, ints = _signature(fn, values, constexprs)
    gpu_target = target.to_triton()
    attrs = _attrs(make_backend(gpu_target), target, sig, ints)
    source = ASTSource
    if getattr(fn, "is_gluon", lambda: False)():   # a Gluon kernel's source is compiled as Gluon
        from triton.experimental.gluon._runtime import GluonASTSource as source
    try:
        src = source(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    except TypeError:  # a Triton whose ASTSource takes no attrs keyword
        src = source(fn=fn, signature=sig, constexprs=constexprs)
    return triton.compile(src, target=gpu_target, options=options)


def _compile_here(req: AotRequest) -> AotReport:
    """Compile in this process (which must not be running Triton's interpreter)."""
    target = Target.parse(req.target)
    start = time.perf_counter()
    try:
        compiled = compile_request(req)
        if target.backend == "hip":
            asm = compiled.asm["amdgcn"]
            stats = _amd_stats(asm)
        else:
            asm = compiled.asm["ptx"]
            stats = _cuda_stats(compiled)
        return AotReport(**_base(req), ok=True, shared=int(compiled.metadata.shared),
                         matrix_instructions=_matrix(asm, target.backend),
                         seconds=round(time.perf_counter() - start, 3), **stats)
    except Exception as e:  # a compile failure is a finding, not a crash
        msg = f"{type(e).__name__}: {e}".strip()
        return AotReport(**_base(req), ok=False, error=msg[-3000:], seconds=round(time.perf_counter() - start, 3))


def _worker_main() -> None:
    """Child-process entry: JSON list of requests on stdin -> JSON list of reports on stdout."""
    reqs = [AotRequest(**{**r, "config": tuple(tuple(kv) for kv in r["config"])}) for r in json.load(sys.stdin)]
    out = [_compile_here(r).to_json() for r in reqs]
    sys.stdout.write("\n" + "@@AOT@@" + json.dumps(out))


def _child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; 1 is its default
    return env


def _run_workers(reqs: list[AotRequest], jobs: int) -> list[AotReport]:
    chunks = [c for c in (reqs[i::jobs] for i in range(jobs)) if c]
    code = "from awq_compile.kernels.aot import _worker_main; _worker_main()"
    results: dict[AotRequest, AotReport] = {}
    with tempfile.TemporaryDirectory() as d:
        procs = []
        for i, chunk in enumerate(chunks):
            out = open(os.path.join(d, f"{i}.out"), "w+")
            err = open(os.path.join(d, f"{i}.err"), "w+")
            p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=out, stderr=err,
                                 text=True, env=_child_env())
            p.stdin.write(json.dumps([dataclasses.asdict(r) for r in chunk]))
            p.stdin.close()
            procs.append((chunk, p, out, err))
        for chunk, p, out, err in procs:
            rc = p.wait()
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
            out.close()
            err.close()
            if rc == 0 and "@@AOT@@" in stdout:
                for r, rep in zip(chunk, json.loads(stdout.rsplit("@@AOT@@", 1)[1])):
                    results[r] = AotReport.from_json(rep)
            else:
                for r in chunk:
                    results[r] = AotReport(**_base(r), ok=False,
                                           error=f"compile worker exited with {rc}: {stderr[-2000:]}")
    return [results[r] for r in reqs]


# ----------------------------------------------------------------------------------------- entry points
def compile_many(requests, *, jobs: int | None = None, use_cache: bool = True) -> list[AotReport]:
    """Reports for ``requests`` (in order).  Identical compiles run once; cached ones not at all.

    ``jobs``: worker processes for the compiles that are not cached (default: CPU count, at most 8).
    """
    requests = list(requests)
    for r in requests:
        if not Target.parse(r.target).is_gpu:
            raise ValueError(f"{r.target} has no Triton ahead-of-time target")
        if r.act_dtype not in _ACT_DTYPES:
            raise ValueError(f"unknown activation dtype {r.act_dtype!r}")
    unique: dict[tuple, AotRequest] = {}
    for r in requests:
        unique.setdefault(r.dedupe_key(), r)
    folder = cache_dir() if use_cache else None
    source_hash, tv = _source_hash(), _triton_version()
    done: dict[tuple, AotReport] = {}
    todo: list[AotRequest] = []
    for key, r in unique.items():
        record = folder / (ck := _cache_key(r, source_hash, tv))[:2] / f"{ck}.json" if folder else None
        if record is not None and record.is_file():
            try:
                done[key] = dataclasses.replace(AotReport.from_json(json.loads(record.read_text())), cached=True)
                continue
            except Exception:
                pass  # unreadable record: recompile and overwrite
        todo.append(r)
    if todo:
        if jobs is None:
            jobs = max(1, min(os.cpu_count() or 1, 8))
        jobs = max(1, min(jobs, len(todo)))
        if jobs == 1 and not _interpreting():
            fresh = [_compile_here(r) for r in todo]
        else:
            fresh = _run_workers(todo, jobs)
        for r, rep in zip(todo, fresh):
            done[r.dedupe_key()] = rep
            if folder is not None and rep.ok:
                ck = _cache_key(r, source_hash, tv)
                record = folder / ck[:2] / f"{ck}.json"
                try:
                    record.parent.mkdir(parents=True, exist_ok=True)
                    tmp = record.with_suffix(f".{os.getpid()}.tmp")
                    tmp.write_text(json.dumps(rep.to_json()))
                    os.replace(tmp, record)
                except OSError:
                    pass  # a read-only cache is not an error
    out = []
    for r in requests:
        rep = done[r.dedupe_key()]
        # a deduplicated report describes the request it stands for
        out.append(dataclasses.replace(rep, **_base(r)))
    return out


def compile_report(kernel_id: str, config, target: Target | str, *, launch=None, act_dtype: str = "float16",
                   group_size: int = 128, has_zeros: bool = True, has_bias: bool = False, K: int = 4096,
                   N: int = 4096, use_cache: bool = True) -> AotReport:
    """Compile ``kernel_id`` with ``config`` for ``target`` ahead of time and report on the result.

    Never raises for a failed compile (the report has ``ok=False`` and the error); raises ValueError for
    a request that makes no sense (a cpu target, an unknown dtype).
    """
    req = AotRequest.make(kernel_id, config, target, launch=launch, act_dtype=act_dtype, group_size=group_size,
                          has_zeros=has_zeros, has_bias=has_bias, K=K, N=N)
    return compile_many([req], jobs=1, use_cache=use_cache)[0]
