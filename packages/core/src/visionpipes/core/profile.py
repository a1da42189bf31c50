"""Model profiling: parameter count, FLOPs (torch's own flop counter) and CPU/GPU latency.

Measures a model as given; it never trains, exports or changes a model (a model is put in eval
mode while measured and restored afterwards). Benchmarks and `vp-core demo` print its tables.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of `model` (shared parameters counted once).

    Args:
        model: any module.
        trainable_only: count only parameters with `requires_grad`.

    Returns:
        The number of scalar parameters.

    Example:
        >>> count_parameters(nn.Conv2d(3, 8, 3, bias=False))
        216
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _as_args(example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise TypeError(
        f"example_inputs must be a tensor or a tuple/list of tensors, got {type(example_inputs).__name__}."
    )


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode for the block, then restore each submodule's own mode."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training


@contextlib.contextmanager
def _num_threads(threads: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}.")
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _extra_flop_formulas() -> dict:
    """Formulas torch's counter lacks: the CPU flash-attention kernel of `scaled_dot_product_attention`
    (taken for contiguous inputs on CPU) has none, so attention would count 0 FLOPs on CPU but not
    on GPU. We give it torch's own SDPA formula (`sdpa_flop_count`, the one used for the CUDA kernels)."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    from torch.utils import flop_counter

    if op is None or op in flop_counter.flop_registry or not hasattr(flop_counter, "sdpa_flop_count"):
        return {}
    return {op: _sdpa_cpu_flop}


def count_flops(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> int:
    """FLOPs of one forward pass on `example_inputs`, as `torch.utils.flop_counter.FlopCounterMode`
    counts them.

    Torch counts a multiply-accumulate as 2 FLOPs (a Conv2d costs `2 * C_in/groups * C_out * k * k *
    H_out * W_out` per sample), and counts only matmul-like ops (convolutions, matmuls, attention);
    norms, activations, pooling and additions count 0. So "GFLOPs" here are about twice the
    "GMACs" many papers call FLOPs (ResNet-50: 4.1 GMACs = 8.2 GFLOPs at 224x224).

    Args:
        model: the module; run in eval mode under `torch.no_grad()` and restored afterwards.
        example_inputs: a tensor or a tuple of tensors passed positionally.

    Returns:
        The total FLOPs (for the whole batch).

    Raises:
        TypeError: if `example_inputs` is not a tensor or a sequence of tensors.

    Example:
        >>> count_flops(nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.zeros(1, 3, 4, 4))
        6912
    """
    from torch.utils.flop_counter import FlopCounterMode

    args = _as_args(example_inputs)
    counter = FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas())
    with eval_mode(model), torch.no_grad(), counter:
        model(*args)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class LatencyStats:
    """Wall-clock time of one forward pass, over `runs` timed repeats (warm-up excluded)."""

    median_ms: float
    p90_ms: float
    min_ms: float
    runs: int

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyStats:
        """Summarise per-run times in milliseconds.

        Raises:
            ValueError: if `samples_ms` is empty.
        """
        if not samples_ms:
            raise ValueError("need at least one latency sample.")
        ordered = sorted(samples_ms)
        # p90 by the nearest-rank method: the smallest sample >= 90 % of the samples.
        rank = max(0, -(-9 * len(ordered) // 10) - 1)
        return cls(
            median_ms=float(statistics.median(ordered)),
            p90_ms=float(ordered[rank]),
            min_ms=float(ordered[0]),
            runs=len(ordered),
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_forward(model: nn.Module, args: tuple[torch.Tensor, ...], repeats: int) -> list[float]:
    """Time `repeats` forward passes of `model(*args)` (ms each), as called: no mode switch,
    no warm-up, no grad context. `measure_latency` wraps this with all three."""
    device = args[0].device if args else torch.device("cpu")
    samples = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        model(*args)
        _sync(device)
        samples.append((time.perf_counter() - start) * 1000.0)
    return samples


def measure_latency(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    warmup: int = 3,
    repeats: int = 10,
    threads: int | None = None,
) -> LatencyStats:
    """Latency of `model(*example_inputs)` in eval mode under `torch.inference_mode()`.

    Args:
        model: the module (on the device of the inputs).
        example_inputs: a tensor or a tuple of tensors.
        warmup: untimed runs first (allocator, oneDNN primitive caches, lazy init).
        repeats: timed runs.
        threads: torch CPU threads during the measurement (restored afterwards); None keeps the
            current setting.

    Returns:
        Median, 90th percentile and minimum over the timed runs.

    Raises:
        ValueError: if `repeats < 1`, `warmup < 0` or `threads < 1`.
        TypeError: if `example_inputs` is not a tensor or a sequence of tensors.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}.")
    args = _as_args(example_inputs)
    with _num_threads(threads), eval_mode(model), torch.inference_mode():
        time_forward(model, args, warmup)
        samples = time_forward(model, args, repeats)
    return LatencyStats.from_samples(samples)


def compare_latency(
    models: dict[str, nn.Module], example: torch.Tensor, *, rounds: int = 6, per_round: int = 5, threads: int = 1
) -> dict[str, float]:
    """Median batch latency (ms) of several models measured side by side: `rounds` rounds over
    all models (order reversed every other round), `per_round` timed runs each, after two warm-up
    runs per model, in eval and inference mode on `threads` CPU threads. Interleaving makes load
    from other processes fall on every model alike, so the ratios are fair on a shared machine.

    Raises:
        ValueError: if `rounds`, `per_round` or `threads` is below 1.
    """
    if min(rounds, per_round, threads) < 1:
        raise ValueError(f"rounds, per_round and threads must be >= 1, got {rounds}, {per_round}, {threads}.")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    samples: dict[str, list[float]] = {name: [] for name in models}
    try:
        with torch.inference_mode():
            for model in models.values():
                with eval_mode(model):
                    time_forward(model, (example,), 2)
            names = list(models)
            for r in range(rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    with eval_mode(models[name]):
                        samples[name] += time_forward(models[name], (example,), per_round)
    finally:
        torch.set_num_threads(previous)
    return {name: float(statistics.median(s)) for name, s in samples.items()}


@dataclass(frozen=True)
class ProfileRow:
    """One line of a profile table."""

    name: str
    params: int
    gflops: float
    latency: LatencyStats
    input_shape: tuple[int, ...]
    threads: int


def profile_model(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    name: str | None = None,
    warmup: int = 3,
    repeats: int = 10,
    threads: int | None = None,
) -> ProfileRow:
    """Parameters, GFLOPs (torch's count, 1 MAC = 2 FLOPs) and latency of one model.

    Raises:
        ValueError, TypeError: as `measure_latency`.
    """
    args = _as_args(example_inputs)
    latency = measure_latency(model, args, warmup=warmup, repeats=repeats, threads=threads)
    return ProfileRow(
        name=name or type(model).__name__,
        params=count_parameters(model),
        gflops=count_flops(model, args) / 1e9,
        latency=latency,
        input_shape=tuple(args[0].shape),
        threads=threads or torch.get_num_threads(),
    )


def format_table(rows: Sequence[ProfileRow]) -> str:
    """An aligned text table of profile rows (one header line, one line per row).

    Example:
        >>> row = ProfileRow("net", 1_500_000, 0.25, LatencyStats(1.0, 1.2, 0.9, 5), (1, 3, 32, 32), 1)
        >>> print(format_table([row]))
        model  params (M)  GFLOPs  median ms  p90 ms  input
        net          1.50   0.250       1.00    1.20  1x3x32x32
    """
    header = ("model", "params (M)", "GFLOPs", "median ms", "p90 ms", "input")
    body = [
        (
            r.name,
            f"{r.params / 1e6:.2f}",
            f"{r.gflops:.3f}",
            f"{r.latency.median_ms:.2f}",
            f"{r.latency.p90_ms:.2f}",
            "x".join(str(d) for d in r.input_shape),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    left = {0, len(header) - 1}  # text columns left-aligned, numbers right-aligned

    def fmt(line: Sequence[str]) -> str:
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))]
        return "  ".join(cells).rstrip()

    return "\n".join(fmt(line) for line in [header, *body])


def backbone_table(
    names: Sequence[str] | None = None,
    batch: int = 1,
    size: int = 224,
    repeats: int = 5,
    *,
    warmup: int = 2,
    threads: int | None = None,
) -> list[ProfileRow]:
    """Build each backbone preset (random weights) and profile it on a `batch x 3 x size x size` input.

    Args:
        names: presets to profile; default all of `list_backbones()`.
        batch: batch size.
        size: input height and width.
        repeats: timed runs per preset.
        warmup: untimed runs per preset.
        threads: torch CPU threads (None: current setting).

    Returns:
        One `ProfileRow` per preset, in the order given.

    Raises:
        ValueError: for an unknown preset name or a non-positive size.
    """
    from visionpipes.core.backbones import build_backbone, list_backbones

    if batch < 1 or size < 32:
        raise ValueError(f"need batch >= 1 and size >= 32 (stride 32), got batch={batch}, size={size}.")
    names = list(names) if names is not None else list_backbones()
    rows = []
    for name in names:
        model = build_backbone(name).eval()
        x = torch.randn(batch, 3, size, size)
        rows.append(profile_model(model, x, name=name, warmup=warmup, repeats=repeats, threads=threads))
    return rows


__all__ = [
    "LatencyStats",
    "ProfileRow",
    "backbone_table",
    "count_flops",
    "count_parameters",
    "eval_mode",
    "format_table",
    "measure_latency",
    "profile_model",
    "time_forward",
]
