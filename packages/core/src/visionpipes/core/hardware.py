"""What the machine offers a plan: the device kind, its memory and the CPU cores, probed here or
given (`plan.device: cuda`, `plan.memory_gb: 80`) so that a plan for a GPU server can be made on a
laptop. Only reads; never allocates on a device.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from visionpipes.core.errors import UserError

__all__ = ["Hardware", "cpu_model_name", "probe_hardware"]

#: Share of a CPU machine's RAM a plan may spend on training activations (the rest: data, OS, caches).
CPU_MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class Hardware:
    """The hardware a plan is made for.

    Attributes:
        device: `cpu` or `cuda` (Apple `mps` plans like `cpu`, sharing system memory).
        memory_gb: memory the training may use: the GPU's total memory, or `CPU_MEMORY_SHARE` of RAM.
        cpu_cores: logical CPU cores (data-loading workers, threads).
        gpus: number of CUDA devices (0 on CPU).
        probed: False when any value came from an override.
    """

    device: Literal["cpu", "cuda", "mps"]
    memory_gb: float
    cpu_cores: int
    gpus: int
    probed: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_model_name() -> str:
    """The CPU's model name (`/proc/cpuinfo`; elsewhere what `platform` knows), for benchmark reports."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError, AttributeError):
        return 8.0


def probe_hardware(
    device: str | None = "auto", memory_gb: float | None = None, cpu_cores: int | None = None
) -> Hardware:
    """Probe this machine, with optional overrides.

    Args:
        device: `auto` (or None: what this machine has), `cpu`, `cuda`, `mps`. An explicit `cuda` on
            a machine without one plans for a GPU that is not here (memory must then be given or
            defaults to 80 GB).
        memory_gb: override the memory budget (GB).
        cpu_cores: override the core count.

    Raises:
        UserError: on an unknown device name or a non-positive override.

    Example:
        >>> probe_hardware("cuda", memory_gb=80, cpu_cores=16).memory_gb
        80.0
    """
    import torch

    wanted = (device or "auto").lower()
    if wanted not in ("auto", "cpu", "cuda", "mps"):
        raise UserError(f"plan device must be auto, cpu, cuda or mps, got {device!r}.")
    if memory_gb is not None and memory_gb <= 0:
        raise UserError(f"plan memory_gb must be > 0, got {memory_gb}.")
    if cpu_cores is not None and cpu_cores < 1:
        raise UserError(f"plan cpu_cores must be >= 1, got {cpu_cores}.")
    has_cuda = torch.cuda.is_available()
    kind = wanted if wanted != "auto" else ("cuda" if has_cuda else "cpu")
    gpus = torch.cuda.device_count() if has_cuda else 0
    if kind == "cuda":
        probed_memory = torch.cuda.get_device_properties(0).total_memory / 1024**3 if has_cuda else 80.0
        gpus = max(gpus, 1)
    else:
        probed_memory = _ram_gb() * CPU_MEMORY_SHARE
    return Hardware(
        device=kind,  # type: ignore[arg-type]
        memory_gb=round(float(memory_gb if memory_gb is not None else probed_memory), 2),
        cpu_cores=int(cpu_cores or os.cpu_count() or 1),
        gpus=gpus,
        probed=memory_gb is None and cpu_cores is None and (wanted == "auto" or (kind == "cuda") == has_cuda),
    )
