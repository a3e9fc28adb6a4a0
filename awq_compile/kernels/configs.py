"""Per-architecture tuning tables, stored as JSON data files in ``configs/``.

A file is named after an architecture (``sm90.json``, ``gfx942.json``) or a family (``cuda.json``,
``cdna.json``, ``rdna.json``).  Inside, ``tables`` is keyed by Triton version (``"3.6"``) with
``"default"`` as the fallback, then by kernel id, then a list of M buckets::

    {"tables": {"default": {"triton_gemm": [
        {"m_max": 16,   "configs": [{"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 64, "SPLIT_K": 4,
                                     "num_warps": 4, "num_stages": 3}, ...]},
        {"m_max": null, "configs": [...]}]}}}

``configs`` lists candidates in preference order; the first one that survives the kernel's pruning rule
for the problem (group size, K, shared memory of the target) is used.  Tables are data, read once per
process on first use (no import-time work).

Lookup is per kernel, most specific first: ``<arch>.json[<triton x.y>]``, ``<arch>.json[default]``,
``<family>.json[<triton x.y>]``, ``<family>.json[default]``.  So an arch file only lists the kernels it
tunes differently, and a version-keyed table only the kernels a Triton release changed.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

__all__ = ["table_for", "source_for", "candidates", "triton_version_key", "available_tables"]


def triton_version_key() -> str:
    try:
        import triton

        major, minor = triton.__version__.split(".")[:2]
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


def _layers(arch: str, family: str, version: str):
    for name in (arch, family):
        data = _load(name) if name else None
        if data is None:
            continue
        tables = data.get("tables", {})
        for key in dict.fromkeys((version, "default")):
            if key in tables:
                yield f"{name}.json[{key}]", tables[key]


def table_for(arch: str, family: str, triton_version: str | None = None) -> tuple[str, dict]:
    """(source label, {kernel_id: [bucket, ...]}) for a target, merged per kernel; empty when none exists."""
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


def source_for(arch: str, family: str, kernel_id: str, triton_version: str | None = None) -> str:
    """Which file and version key supplies ``kernel_id``'s buckets (``none`` if no table has it)."""
    version = triton_version or triton_version_key()
    for label, table in _layers(arch, family, version):
        if kernel_id in table:
            return label
    return "none"


def candidates(arch: str, family: str, kernel_id: str, m: int | None,
               triton_version: str | None = None) -> tuple[str, list[dict]]:
    """The configs of the first bucket whose m_max covers ``m`` (None: the open-ended bucket)."""
    version = triton_version or triton_version_key()
    for label, table in _layers(arch, family, version):
        if kernel_id not in table:
            continue
        for bucket in table[kernel_id]:
            top = bucket.get("m_max")
            if top is None or (m is not None and m <= top):
                return label, [dict(c) for c in bucket["configs"]]
        return label, []
    return "none", []
