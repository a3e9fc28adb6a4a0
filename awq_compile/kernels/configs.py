"""Per-architecture tuning tables, stored as JSON data files in ``configs/``, parsed into typed candidates.

A file is named after an architecture (``sm90.json``, ``gfx942.json``) or a family (``cuda.json``,
``cdna.json``, ``rdna.json``); its backend (``cuda`` for ``cuda``/``smNN``, ``hip`` for ``cdna``/``rdna``/
``gfxNNN``) decides which launch options its entries may carry.  Inside, ``tables`` is keyed by Triton
version (``"3.6"``) with ``"default"`` as the fallback, then by *slot* -- a Triton kernel id in the target
family's priority list (:data:`~awq_compile.kernels.registry.PRIORITY`) -- then a list of M buckets::

    {"comment": "...", "tables": {"default": {"triton_gemm": [
        {"m_max": 16,   "configs": [{"kernel": "triton_gemm_planes", "BLOCK_M": 16, "BLOCK_N": 128,
                                     "BLOCK_K": 128, "SPLIT_K": 8, "XPERM": 1, "num_warps": 4, "num_stages": 3},
                                    {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 64, "SPLIT_K": 4,
                                     "num_warps": 4, "num_stages": 3}, ...]},
        {"m_max": null, "configs": [...]}]}}}

``configs`` lists candidates in preference order; the first that survives its kernel's pruning rule for
the problem (group size, K, shared memory of the target) is used.  An entry runs the slot's own kernel
unless it names another with ``"kernel"``; its other keys are that kernel's config fields (upper case,
:mod:`.specs`), launch options (``num_warps`` and ``num_stages`` required; on hip files also
``waves_per_eu``, ``matrix_instr_nonkdim``, ``kpack``; on cuda files ``maxnreg``) and optional shape
conditions ``K_MIN``/``K_MAX``/``N_MIN``/``N_MAX`` (inclusive).  Any other key, a missing field, an
unknown kernel or slot raises :class:`~awq_compile.kernels.spec.TableError` naming the file, the arch being
planned and the entry.  Tables are read and parsed on first use (no import-time work).

A version table may also declare the packed layout the target's layers want, ``"layout": "kplanes"``
(default ``standard``): a layer gets it when every slot of its plan can serve it and
:func:`~awq_compile.formats.kplanes.kplanes_reason` allows its shape (:func:`layout_for`; the most
specific table that declares a layout decides).  Selection then only takes entries whose kernel reads
that layout (:attr:`~.spec.KernelSpec.layouts`).

Lookup is per slot, most specific first: ``<arch>.json[<triton x.y>]``, ``<arch>.json[default]``,
``<family>.json[<triton x.y>]``, ``<family>.json[default]``.  So an arch file only lists the slots it
tunes differently, and a version-keyed table only the slots a Triton release changed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from importlib import resources

from .problem import LAYOUTS
from .spec import KernelConfig, LaunchOptions, ShapeFilter, TableError
from .specs import all_specs

__all__ = ["Candidate", "Bucket", "table_for", "source_for", "candidates", "triton_version_key",
           "available_tables", "parse_table", "layout_for", "TableError"]



@dataclasses.dataclass(frozen=True)
class Candidate:
    """One table entry: the kernel it runs, its config and launch options, the shapes it is meant for."""

    kernel: str
    config: KernelConfig
    launch: LaunchOptions
    shapes: ShapeFilter = ShapeFilter()
    where: str = dataclasses.field(default="", compare=False)


@dataclasses.dataclass(frozen=True)
class Bucket:
    m_max: int | None
    candidates: tuple


def triton_version_key() -> str:
    """``x.y`` of the installed Triton, read from its package metadata (selection never imports Triton)."""
    try:
        from importlib.metadata import version

        major, minor = version("triton").split(".")[:2]
        return f"{major}.{minor}"
    except Exception:  # triton missing: CPU-only use
        return "default"


@functools.lru_cache(maxsize=None)
def _load(name: str) -> dict | None:
    path = resources.files(__package__).joinpath("configs", f"{name}.json")
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def available_tables() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(__package__).joinpath("configs").iterdir()
                  if p.name.endswith(".json"))


def _backend_of(name: str) -> str:
    if name in ("cuda",) or re.match(r"^sm\d+$", name):
        return "cuda"
    if name in ("cdna", "rdna") or re.match(r"^gfx[0-9a-f]+$", name):
        return "hip"
    raise TableError(f"{name}.json: a table file is named after an architecture (smNN, gfxNNN) or a family "
                     "(cuda, cdna, rdna)")


_SHAPE_KEYS = tuple(ShapeFilter.table_keys())


def parse_table(name: str, data, arch: str = "") -> dict:
    """{version: {slot: (Bucket, ...)}} of one table file's JSON; raises TableError on anything unknown."""
    head = f"{name}.json" + (f" (planning arch {arch})" if arch else "")
    if not isinstance(data, dict):
        raise TableError(f"{head}: a table file is a JSON object")
    extra = sorted(set(data) - {"comment", "tables"})
    if extra or not isinstance(data.get("tables"), dict):
        raise TableError(f"{head}: expected the keys 'comment' and 'tables', found {sorted(data)}")
    backend = _backend_of(name)
    specs = all_specs()
    slots = sorted(k for k, s in specs.items() if s.uses_triton)
    out = {}
    for version, table in data["tables"].items():
        if not (version == "default" or re.match(r"^\d+\.\d+$", version)):
            raise TableError(f"{head}: version key {version!r} is neither 'default' nor 'x.y'")
        parsed = {}
        for slot, buckets in table.items():
            where_slot = f"{head}: tables[{version!r}][{slot!r}]"
            if slot == "layout":
                if backend != "cuda" or buckets not in LAYOUTS:
                    raise TableError(f"{where_slot}: 'layout' is one of {LAYOUTS} (CUDA tables only, where "
                                     f"measured), found {buckets!r}")
                continue                # read by layout_for (validated here)
            if slot not in slots:
                raise TableError(f"{where_slot}: unknown slot; slots are the Triton kernels {slots}")
            if not isinstance(buckets, list) or not buckets:
                raise TableError(f"{where_slot}: expected a non-empty list of M buckets")
            result, last = [], 0
            for i, b in enumerate(buckets):
                where_b = f"{where_slot} bucket #{i}"
                if not isinstance(b, dict) or sorted(set(b) - {"comment"}) != ["configs", "m_max"]:
                    raise TableError(f"{where_b}: a bucket has exactly the keys 'm_max' and 'configs' "
                                     f"(and an optional 'comment'), found {sorted(b) if isinstance(b, dict) else b}")
                top = b["m_max"]
                if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top <= last):
                    raise TableError(f"{where_b}: m_max={top!r} must be an integer above the previous bucket's")
                if last is None:
                    raise TableError(f"{where_b}: follows the open bucket (m_max null), which must be last")
                last = top
                where_b = f"{where_slot} bucket m_max={top}"
                if not isinstance(b["configs"], list) or not b["configs"]:
                    raise TableError(f"{where_b}: 'configs' must be a non-empty list")
                cands = []
                for j, entry in enumerate(b["configs"]):
                    where = f"{where_b} config #{j}"
                    if not isinstance(entry, dict):
                        raise TableError(f"{where}: an entry is a JSON object")
                    kernel = entry.get("kernel", slot)
                    if kernel not in specs or not specs[kernel].uses_triton:
                        raise TableError(f"{where}: unknown kernel {kernel!r}; Triton kernels: {slots}")
                    rest = {k: v for k, v in entry.items() if k != "kernel"}
                    shapes = ShapeFilter.from_table({k: v for k, v in rest.items() if k in _SHAPE_KEYS}, where)
                    cfg, launch = specs[kernel].parse({k: v for k, v in rest.items() if k not in _SHAPE_KEYS},
                                                      where, backend=backend)
                    cands.append(Candidate(kernel, cfg, launch, shapes, where))
                result.append(Bucket(top, tuple(cands)))
            parsed[slot] = tuple(result)
        out[version] = parsed
    return out


_PARSED: dict = {}


def _parsed(name: str, arch: str) -> dict | None:
    raw = _load(name)
    if raw is None:
        return None
    key = (name, arch)
    hit = _PARSED.get(key)
    if hit is None or hit[0] is not raw:       # a replaced raw table (tests inject some) is parsed afresh
        hit = (raw, parse_table(name, raw, arch))
        _PARSED[key] = hit
    return hit[1]


def _layers(arch: str, family: str, version: str):
    for name in (arch, family):
        data = _parsed(name, arch) if name else None
        if data is None:
            continue
        for key in dict.fromkeys((version, "default")):
            if key in data:
                yield f"{name}.json[{key}]", data[key]


def table_for(arch: str, family: str, triton_version: str | None = None) -> tuple[str, dict]:
    """(source label, {slot: (Bucket, ...)}) for a target, merged per slot; empty when none exists."""
    version = triton_version or triton_version_key()
    merged: dict = {}
    sources: list[str] = []
    for label, table in _layers(arch, family, version):
        added = [k for k in table if k not in merged]
        for k in added:
            merged[k] = table[k]
        if added:
            sources.append(label)
    return (" + ".join(sources) or "none"), merged


def layout_for(arch: str, family: str, triton_version: str | None = None) -> tuple[str, str]:
    """(layout, source label) the target's tables ask for: the most specific table that declares one
    (``standard``, ``none`` when no table does)."""
    version = triton_version or triton_version_key()
    for name in (arch, family):
        if not name or _parsed(name, arch) is None:          # parsing validates the declaration
            continue
        tables = _load(name)["tables"]
        for key in dict.fromkeys((version, "default")):
            if "layout" in tables.get(key, {}):
                return tables[key]["layout"], f"{name}.json[{key}]"
    return "standard", "none"


def source_for(arch: str, family: str, slot: str, triton_version: str | None = None) -> str:
    """Which file and version key supplies ``slot``'s buckets (``none`` if no table has it)."""
    version = triton_version or triton_version_key()
    for label, table in _layers(arch, family, version):
        if slot in table:
            return label
    return "none"


def candidates(arch: str, family: str, slot: str, m: int | None,
               triton_version: str | None = None) -> tuple[str, tuple]:
    """(source, candidates) of the first bucket of ``slot`` whose m_max covers ``m`` (None: the open one)."""
    version = triton_version or triton_version_key()
    for label, table in _layers(arch, family, version):
        if slot not in table:
            continue
        for bucket in table[slot]:
            if bucket.m_max is None or (m is not None and m <= bucket.m_max):
                return label, bucket.candidates
        return label, ()
    return "none", ()
