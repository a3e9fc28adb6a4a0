"""The hardware a compile is for, as a plain value.

A :class:`Target` names a backend and an architecture -- ``cpu``, ``cuda:sm90``, ``hip:gfx942`` -- and
answers the questions kernel selection and tuning ask of it (wave size, shared/LDS memory, SM/CU count,
matrix-unit kind, whether Triton can compile for it).  Nothing here reads the host: :func:`detect` is the one
function that looks at the running torch: the backend calls it once when it resolves its options, and
the custom op once per device it meets, to check that device against the plan's target.
:func:`interpreter_active` is the other host fact (is Triton's interpreter on?); the run-time launcher
reads it and passes it to the launch plan as a value.  Everything downstream (passes, registry, config tables, AOT checks) receives the value, so
asking about ``hip:gfx942`` on a CPU-only machine gives the same answer as on an MI300.

This module imports nothing from awq_compile; torch and triton are imported lazily by the two
functions that need them.
"""

from __future__ import annotations

import dataclasses
import re

__all__ = ["Target", "detect", "interpreter_active", "KNOWN_TARGETS", "CI_TARGETS"]

# Facts per architecture.  Shared memory is the per-block maximum Triton may use (bytes); for AMD it
# is the LDS a workgroup may allocate.  Sources: vendor programming guides (CUDA C Programming Guide
# "Technical Specifications per Compute Capability", AMD CDNA/RDNA ISA documents); see docs/targets.md.
_CUDA_ARCHS = {
    # arch: (shared bytes per block, matrix unit, triton kernels supported?)
    "sm70": (98304, "mma.sync (volta)", False),
    "sm75": (65536, "mma.sync", False),
    "sm80": (166912, "mma.sync", True),
    "sm86": (101376, "mma.sync", True),
    "sm87": (166912, "mma.sync", True),
    "sm89": (101376, "mma.sync", True),
    "sm90": (232448, "wgmma", True),
    "sm100": (232448, "tcgen05", True),
    "sm103": (232448, "tcgen05", True),
    "sm120": (101376, "mma.sync", True),
    "sm121": (101376, "mma.sync", True),
}

_HIP_ARCHS = {
    # arch: (wave size, LDS bytes, matrix unit, triton supported?)
    "gfx908": (64, 65536, "mfma", False),
    "gfx90a": (64, 65536, "mfma", True),
    "gfx942": (64, 65536, "mfma", True),
    "gfx950": (64, 163840, "mfma", True),
    "gfx1030": (32, 65536, None, False),
    "gfx1100": (32, 65536, "wmma", True),
    "gfx1101": (32, 65536, "wmma", True),
    "gfx1102": (32, 65536, "wmma", True),
    "gfx1150": (32, 65536, "wmma", True),
    "gfx1151": (32, 65536, "wmma", True),
    "gfx1200": (32, 65536, "wmma", True),
    "gfx1201": (32, 65536, "wmma", True),
}

# Streaming multiprocessors (NVIDIA) / compute units (AMD) of each architecture's reference part (the one
# its tables were tuned on, else the largest common part): the programs of a persistent or Stream-K grid.
# A part of the same architecture with fewer units (H100 PCIe: 114) still computes the right result;
# the programs beyond its count then run as a short second wave.  Sources: vendor datasheets.
_COMPUTE_UNITS = {
    "sm80": 108, "sm86": 84, "sm87": 16, "sm89": 142, "sm90": 132, "sm100": 148, "sm103": 148, "sm120": 170,
    "sm121": 48,
    "gfx908": 120, "gfx90a": 110, "gfx942": 304, "gfx950": 256, "gfx1030": 80, "gfx1100": 96, "gfx1101": 60,
    "gfx1102": 32, "gfx1150": 16, "gfx1151": 40, "gfx1200": 32, "gfx1201": 64,
}
_FAMILY_UNITS = {"cuda": 132, "cdna": 304, "rdna": 96}

KNOWN_TARGETS = ("cpu",) + tuple(f"cuda:{a}" for a in _CUDA_ARCHS) + tuple(f"hip:{a}" for a in _HIP_ARCHS)
# The targets CI proves by ahead-of-time compilation (issue 3).
CI_TARGETS = ("hip:gfx90a", "hip:gfx942", "hip:gfx950", "hip:gfx1100", "hip:gfx1151", "hip:gfx1201",
              "cuda:sm80", "cuda:sm90")

_SPEC = re.compile(r"^(cpu|cuda|hip)(?::([A-Za-z0-9_]+))?$")


@dataclasses.dataclass(frozen=True, order=True)
class Target:
    """``backend`` is ``cpu``, ``cuda`` or ``hip``; ``arch`` is ``sm90``-style or ``gfx942``-style."""

    backend: str
    arch: str = ""

    # ---------------------------------------------------------------- parse / format
    @classmethod
    def parse(cls, spec: "str | Target") -> "Target":
        """Read a target from text.

        Accepted: ``cpu``; ``cuda:sm90``, ``cuda:90``, ``cuda:9.0``, ``cuda:sm_90a``; ``hip:gfx942``,
        ``hip:gfx942:sramecc+:xnack-`` (a ROCm ``gcnArchName``); a bare ``sm90`` or ``gfx942``.
        ``str(Target.parse(s))`` is the canonical spelling (``cuda:sm90``, ``hip:gfx942``).
        """
        if isinstance(spec, Target):
            return spec
        text = str(spec).strip().lower()
        if re.match(r"^gfx[0-9a-f]+(:|$)", text):
            text = "hip:" + text
        elif re.match(r"^sm_?\d+[af]?$", text):
            text = "cuda:" + text
        if text.startswith("hip:gfx"):
            text = ":".join(text.split(":")[:2])  # drop gcnArchName feature suffixes (":sramecc+:xnack-")
        m = re.match(r"^cuda:(\d+)\.(\d+)$", text)
        if m:
            text = f"cuda:sm{m.group(1)}{m.group(2)}"
        m = _SPEC.match(text.replace("sm_", "sm"))
        if not m:
            raise ValueError(f"cannot parse target {spec!r}: expected 'cpu', 'cuda:smNN' or 'hip:gfxNNNN'")
        backend, arch = m.group(1), m.group(2) or ""
        if backend == "cpu":
            if arch:
                raise ValueError(f"target {spec!r}: 'cpu' takes no architecture")
            return cls("cpu", "")
        if not arch:
            raise ValueError(f"target {spec!r} needs an architecture, e.g. 'cuda:sm90' or 'hip:gfx942'")
        if backend == "cuda":
            if arch.isdigit():
                arch = "sm" + arch
            arch = arch.rstrip("af") if re.match(r"^sm\d+[af]$", arch) else arch
            if not re.match(r"^sm\d+$", arch):
                raise ValueError(f"target {spec!r}: CUDA architectures are written smNN (e.g. sm90)")
        elif not re.match(r"^gfx[0-9a-f]+$", arch):
            raise ValueError(f"target {spec!r}: HIP architectures are written gfxNNN (e.g. gfx942)")
        return cls(backend, arch)

    def __str__(self) -> str:
        return self.backend if self.backend == "cpu" else f"{self.backend}:{self.arch}"

    # ---------------------------------------------------------------- facts
    @property
    def is_gpu(self) -> bool:
        return self.backend in ("cuda", "hip")

    @property
    def known(self) -> bool:
        return self.backend == "cpu" or self.arch in (_CUDA_ARCHS if self.backend == "cuda" else _HIP_ARCHS)

    @property
    def capability(self) -> int | None:
        """CUDA compute capability as an integer (``sm90`` -> 90); None for other backends."""
        return int(self.arch[2:]) if self.backend == "cuda" else None

    @property
    def family(self) -> str:
        """``cpu``, ``cuda``, ``cdna`` (gfx9, wave64, MFMA) or ``rdna`` (gfx10+, wave32, WMMA)."""
        if self.backend == "hip":
            return "cdna" if self.arch.startswith("gfx9") else "rdna"
        return self.backend

    @property
    def warp_size(self) -> int:
        if self.backend == "hip":
            return _HIP_ARCHS.get(self.arch, (64 if self.family == "cdna" else 32,))[0]
        return 32 if self.backend == "cuda" else 1

    @property
    def wave_size(self) -> int:
        """Threads per wave/warp: 64 on CDNA, 32 on RDNA and NVIDIA (1 for cpu)."""
        return self.warp_size

    @property
    def shared_memory(self) -> int:
        """Bytes of shared memory (CUDA) or LDS (HIP) one block may use; 0 for cpu."""
        if self.backend == "cuda":
            if self.arch in _CUDA_ARCHS:
                return _CUDA_ARCHS[self.arch][0]
            return 101376  # conservative for an unknown NVIDIA part
        if self.backend == "hip":
            return _HIP_ARCHS.get(self.arch, (0, 65536))[1]
        return 0

    @property
    def matrix_unit(self) -> str | None:
        """``mma.sync``, ``wgmma``, ``tcgen05``, ``mfma``, ``wmma`` or None."""
        if self.backend == "cuda":
            return _CUDA_ARCHS.get(self.arch, (0, "mma.sync"))[1]
        if self.backend == "hip":
            return _HIP_ARCHS.get(self.arch, (0, 0, None))[2]
        return None

    @property
    def compute_units(self) -> int:
        """SMs (NVIDIA) or CUs (AMD) of the architecture's reference part (H100/H200 SXM: 132; MI300X: 304),
        an explicit fact of the target (never read from the host): what a persistent grid is sized to;
        0 for cpu."""
        if self.backend == "cpu":
            return 0
        return _COMPUTE_UNITS.get(self.arch, _FAMILY_UNITS.get(self.family, 132))

    def triton_support(self) -> str | None:
        """None when our Triton kernels can be compiled for this target, else the reason they cannot."""
        if self.backend == "cpu":
            return "Triton kernels need a GPU target; cpu runs the CPU path"
        if self.backend == "cuda":
            cap = self.capability or 0
            if cap < 80:
                return (f"{self} is below sm80: no bf16 tensor cores and Triton's mma path for it is "
                        "unsupported/untested, so the Triton W4A16 kernels are not offered")
            return None
        if self.arch not in _HIP_ARCHS:
            return f"{self} is not an AMD architecture this project knows (known: {', '.join(_HIP_ARCHS)})"
        if not _HIP_ARCHS[self.arch][3]:
            return (f"Triton does not compile for {self.arch} "
                    + ("(RDNA2 has no WMMA and Triton's AMD backend rejects it)" if self.arch == "gfx1030"
                       else "(not in Triton's supported AMD architectures)"))
        return None

    def to_triton(self):
        """Triton's ``GPUTarget`` for ahead-of-time compilation (``triton.backends.compiler.GPUTarget``)."""
        from triton.backends.compiler import GPUTarget

        if self.backend == "cuda":
            return GPUTarget("cuda", self.capability, 32)
        if self.backend == "hip":
            return GPUTarget("hip", self.arch, self.warp_size)
        raise ValueError("cpu has no Triton GPUTarget")


def detect(device=None) -> Target:
    """The target of ``device`` (default: the current CUDA/HIP device, else cpu) from the running torch.

    On ROCm the architecture comes from ``gcnArchName`` -- torch reports NVIDIA-style capability numbers
    there too (9.4 on an MI300), which mean nothing for AMD.
    """
    import torch

    if device is not None:
        device = torch.device(device)
        if device.type == "cpu":
            return Target("cpu")
    if not torch.cuda.is_available():
        return Target("cpu")
    index = device.index if device is not None and device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    if getattr(torch.version, "hip", None):
        return Target.parse("hip:" + props.gcnArchName.split(":")[0])
    return Target("cuda", f"sm{props.major}{props.minor}")


def interpreter_active() -> bool:
    """Whether Triton runs its interpreter in this process (``TRITON_INTERPRET``, which Triton reads when it
    is first imported): kernels then run on CPU tensors and launch options mean nothing."""
    import os

    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "off")
