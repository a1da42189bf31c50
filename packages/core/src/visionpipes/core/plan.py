"""Domain-independent plan plumbing (issue #13 part 1): the `Plan` record a domain's `plan` verb
writes, reading and writing it atomically, the hardware a plan is made for (probed, or overridden by
`plan.device` / `plan.memory_gb` / `plan.cpu_cores` in `params.yaml` and by command-line flags), and
the resolution of `auto` values in a `params.yaml` section against a plan.

A domain supplies the fingerprint of its data and the rules that turn fingerprint + hardware into
values; everything else lives here:

    fingerprint = ...                                   # domain: statistics of the data
    hardware = plan_hardware(params_section(p, "plan"), device=args.device, memory_gb=args.memory_gb)
    plan = Plan.make("driving", values, hardware=hardware, fingerprint=fingerprint,
                     reasons=reasons, params=load_params(p))   # records which keys params overrides
    write_plan("plan.json", plan)
    ...
    section = resolve_auto(params_section(p, "det"), read_plan("plan.json", domain="driving"),
                           prefix="det", keys=("imgsz", "batch"), source="params.yaml:det")

Plan keys are dotted `params.yaml` paths (`det.imgsz`, `train.image_size`); a value in `params.yaml`
is either `auto` (take the plan's) or explicit (it wins; `Plan.overridden` records it next to the
planned value). No torch, no field library: `plan_hardware` imports torch only through
`core.hardware.probe_hardware`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionpipes.core.errors import UserError

__all__ = [
    "AUTO",
    "PLAN_FORMAT_VERSION",
    "Plan",
    "fingerprint_sha256",
    "lookup",
    "plan_hardware",
    "plan_verb",
    "read_plan",
    "resolve_auto",
    "write_plan",
]

#: The `params.yaml` value that means "take the plan's value".
AUTO = "auto"
#: Version of the plan JSON layout; `read_plan` refuses a newer one.
PLAN_FORMAT_VERSION = 1


def fingerprint_sha256(fingerprint: Mapping[str, Any]) -> str:
    """sha256 of the fingerprint's canonical JSON (sorted keys, no spaces): equal data, equal hash."""
    text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def lookup(params: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    """`(found, value)` of a dotted key (`lanes.model.width`) in a nested mapping."""
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == AUTO


@dataclass
class Plan:
    """A plan: the values chosen for one data set on one hardware.

    Attributes:
        domain: `driving`, `retail`, `medical`.
        values: dotted `params.yaml` key -> planned value (`det.imgsz: 640`).
        overridden: key -> `{"planned": ..., "params": ...}` for each planned key that `params.yaml`
            sets explicitly (not `auto`): those values win at training time.
        hardware: the `core.hardware.Hardware` the plan was made for, as a dict (`probed` False when
            an override gave any of it).
        fingerprint: the domain's data statistics the plan was made from.
        fingerprint_sha256: `fingerprint_sha256(fingerprint)`.
        reasons: key -> one sentence on the rule that chose the value.
        format_version: `PLAN_FORMAT_VERSION`.
    """

    domain: str
    values: dict[str, Any]
    hardware: dict[str, Any]
    fingerprint: dict[str, Any]
    fingerprint_sha256: str = ""
    overridden: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    format_version: int = PLAN_FORMAT_VERSION

    @classmethod
    def make(
        cls,
        domain: str,
        values: Mapping[str, Any],
        *,
        hardware: Any,
        fingerprint: Mapping[str, Any],
        reasons: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Plan:
        """A plan with its fingerprint hash and, when the whole `params` mapping is given, the
        planned keys it sets explicitly (`overridden`). `hardware`: a `Hardware` or a dict."""
        hw = hardware.to_dict() if hasattr(hardware, "to_dict") else dict(hardware)
        plan = cls(
            domain=domain,
            values=dict(values),
            hardware=hw,
            fingerprint=dict(fingerprint),
            fingerprint_sha256=fingerprint_sha256(fingerprint),
            reasons=dict(reasons or {}),
        )
        if params is not None:
            plan.overridden = plan.explicit_in(params)
        return plan

    def explicit_in(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The planned keys that `params` (a whole params.yaml mapping) sets to a value, not `auto`."""
        out: dict[str, Any] = {}
        for key, planned in self.values.items():
            found, value = lookup(params, key)
            if found and not _is_auto(value):
                out[key] = {"planned": planned, "params": value}
        return out

    def effective(self) -> dict[str, Any]:
        """The values training uses: the planned ones with the explicit overrides on top."""
        return {
            k: self.overridden[k]["params"] if k in self.overridden else v for k, v in self.values.items()
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "domain": self.domain,
            "values": self.values,
            "overridden": self.overridden,
            "effective": self.effective(),
            "reasons": self.reasons,
            "hardware": self.hardware,
            "fingerprint_sha256": self.fingerprint_sha256,
            "fingerprint": self.fingerprint,
        }

    def summary(self) -> dict[str, Any]:
        """What a deployed model records (`model.json`, model card): everything but the fingerprint
        itself, which its hash stands for."""
        out = self.to_dict()
        out.pop("fingerprint")
        return out


def write_plan(path: str | os.PathLike, plan: Plan) -> Path:
    """Write the plan JSON atomically (the folder is created). Returns the path."""
    from visionpipes.core.io import write_json

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json(target, plan.to_dict())
    return target


def read_plan(path: str | os.PathLike, *, domain: str | None = None) -> Plan:
    """Read a plan JSON written by `write_plan`.

    Raises:
        UserError: if the file is missing, not JSON, not a plan, newer than this code, or of another
            domain than `domain`.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"plan file {p} does not exist; write it with `vp-{domain or '<domain>'} plan`.")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"plan file {p} is not readable JSON ({err}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("values"), dict) or "domain" not in data:
        raise UserError(f"plan file {p} is not a plan (no 'domain' and 'values').")
    version = data.get("format_version", 0)
    if not isinstance(version, int) or version > PLAN_FORMAT_VERSION:
        raise UserError(
            f"plan file {p} has format_version {version!r}; this code reads up to {PLAN_FORMAT_VERSION}."
        )
    if domain is not None and data["domain"] != domain:
        raise UserError(f"plan file {p} is a {data['domain']!r} plan, not a {domain!r} one.")
    return Plan(
        domain=data["domain"],
        values=data["values"],
        hardware=data.get("hardware") or {},
        fingerprint=data.get("fingerprint") or {},
        fingerprint_sha256=data.get("fingerprint_sha256", ""),
        overridden=data.get("overridden") or {},
        reasons=data.get("reasons") or {},
        format_version=version,
    )


def plan_hardware(
    section: Mapping[str, Any] | None,
    *,
    device: str | None = None,
    memory_gb: float | None = None,
    cpu_cores: int | None = None,
    source: str = "params.yaml:plan",
) -> Any:
    """The `core.hardware.Hardware` a plan is made for: this machine, with the `plan` section of
    params.yaml (`device`, `memory_gb`, `cpu_cores`; `auto`/null: probe) and then the explicit
    arguments (command-line flags) on top.

    Raises:
        UserError: on an unknown key in the section, or a bad device/memory/core value.
    """
    from visionpipes.core.hardware import probe_hardware

    if section is not None and not isinstance(section, Mapping):
        raise UserError(
            f"{source}: must be a mapping (device, memory_gb, cpu_cores), got {type(section).__name__}."
        )
    section = dict(section or {})
    unknown = sorted(set(section) - {"device", "memory_gb", "cpu_cores"})
    if unknown:
        raise UserError(f"{source}: unknown key '{unknown[0]}' (valid: device, memory_gb, cpu_cores).")

    def pick(flag: Any, key: str, kind: type) -> Any:
        value = flag if flag is not None else section.get(key)
        if value is None or _is_auto(value):
            return None
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise UserError(
                f"{source}: key '{key}' = {value!r} is not a {kind.__name__} (or auto)."
            ) from None

    wanted = device if device is not None else section.get("device")
    memory, cores = pick(memory_gb, "memory_gb", float), pick(cpu_cores, "cpu_cores", int)
    if (wanted is None or str(wanted).lower() in ("auto", "cpu")) and _without_gpu_driver():
        # what probe_hardware answers on a machine without a GPU driver, without importing torch
        # (seconds of a plan stage on a busy CPU)
        from visionpipes.core.hardware import CPU_MEMORY_SHARE, Hardware, _ram_gb

        if memory is not None and memory <= 0:
            raise UserError(f"plan memory_gb must be > 0, got {memory}.")
        if cores is not None and cores < 1:
            raise UserError(f"plan cpu_cores must be >= 1, got {cores}.")
        return Hardware(
            device="cpu",
            memory_gb=round(float(memory if memory is not None else _ram_gb() * CPU_MEMORY_SHARE), 2),
            cpu_cores=int(cores or os.cpu_count() or 1),
            gpus=0,
            probed=memory is None and cores is None,
        )
    return probe_hardware(None if wanted is None else str(wanted), memory_gb=memory, cpu_cores=cores)


def plan_verb(
    data: str | os.PathLike,
    out: str | os.PathLike,
    make_plan: Callable[..., Plan],
    *,
    params: str | os.PathLike | None = None,
    device: str | None = None,
    memory_gb: float | None = None,
    cpu_cores: int | None = None,
) -> dict[str, Any]:
    """The `plan` verb of a domain (`vp-driving plan`, `vp-retail plan`): read `params` (its `plan`
    section and the keys it sets explicitly), choose the hardware (`plan_hardware`, the flags on top),
    `make_plan(data, hardware, params=...)`, write the plan JSON atomically to `out` and print what it
    planned (the plan's summary without the reasons, after `"plan": out`) as indented JSON.

    Returns:
        The printed mapping.

    Raises:
        UserError: on a missing/bad params file, a bad `plan` section or flag, or what `make_plan`
            raises for bad data.
    """
    from visionpipes.core.io import load_params

    loaded = load_params(params) if params else None
    hardware = plan_hardware(
        (loaded or {}).get("plan"),
        device=device,
        memory_gb=memory_gb,
        cpu_cores=cpu_cores,
        source=f"{params}:plan",
    )
    plan = make_plan(data, hardware, params=loaded)
    write_plan(out, plan)
    result = {"plan": str(out), **{k: v for k, v in plan.summary().items() if k != "reasons"}}
    print(json.dumps(result, indent=2))
    return result


def _without_gpu_driver() -> bool:
    """True on Linux when no NVIDIA/AMD GPU driver is present (then torch sees no CUDA device)."""
    import sys

    if not sys.platform.startswith("linux") or "torch" in sys.modules:
        return False
    return not any(
        Path(p).exists() for p in ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")
    )


def resolve_auto(
    section: Mapping[str, Any],
    plan: Plan | None,
    *,
    prefix: str,
    keys: Iterable[str],
    source: str,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Replace `auto` at the planned `keys` of one params section with the plan's values.

    Args:
        section: one params.yaml section (e.g. `det`), nested mappings allowed; not modified.
        plan: the plan, or None when none was given.
        prefix: the section's dotted path in params.yaml (`det`, `lanes`, `train`).
        keys: the keys of the section that may be `auto` (dotted below the section: `model.width`).
        source: named in errors (`params.yaml:det`).

    Returns:
        `(resolved section, {dotted key: "plan" or "params"})`: where each planned value came from.

    Raises:
        UserError: if a key is `auto` and there is no plan, or the plan lacks that key.
    """
    import copy

    out: dict[str, Any] = copy.deepcopy(dict(section))
    origin: dict[str, str] = {}
    for key in keys:
        full = f"{prefix}.{key}"
        found, value = lookup(out, key)
        if not found or not _is_auto(value):
            if found:
                origin[full] = "params"
            continue
        if plan is None:
            raise UserError(
                f"{source}: key '{key}' is auto but no plan was given: run `vp-<domain> plan` and pass --plan PLAN.json."
            )
        if full not in plan.values:
            raise UserError(
                f"{source}: key '{key}' is auto but the {plan.domain} plan has no value for '{full}'."
            )
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = plan.values[full]
        origin[full] = "plan"
    return out, origin
