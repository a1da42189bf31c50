"""Export a model to ONNX or TorchScript, proving the exported file computes what the eager model
computes (max abs difference on the same inputs), and run ONNX files with onnxruntime.

An export that fails its parity check raises `ExportParityError` and leaves no file behind (the
file is written beside the target and renamed only after the check). Nothing here trains a model.

ONNX exporter choice. Torch >= 2.9 defaults `torch.onnx.export` to the torch.export ("dynamo")
exporter; `export_onnx` defaults to the TorchScript-based one (`dynamo=False`) and offers the new
one with `dynamo=True`. Both export every backbone preset, SelfAttention's
`scaled_dot_product_attention` included, with the same parity (at 1x3x64x64, torch 2.14.1,
onnxruntime 1.32: max abs diff 2e-8 to 1.5e-4, at most ~3e-6 of the output's scale), and both
honour `dynamic_axes` (batch and spatial size). But the TorchScript-based exporter takes 0.2-2.4 s
per preset where the dynamo one takes 3-11 s (2 shared CPU cores), needs no onnxscript, writes
opset 17 natively (the dynamo exporter writes 18 and converts down, which it warns may fail),
and exists on every torch this package supports (`dynamo=` appeared in torch 2.5). It is
deprecated upstream and emits a DeprecationWarning that we silence; when torch drops it, switch
the default to `dynamo=True`.
TorchScript export uses `torch.jit.trace` (likewise deprecated upstream in favour of
`torch.export`, its FutureWarnings silenced here).

Tolerance. An output passes when its max abs difference is <= `atol + rtol * scale`, scale being
that output's largest absolute value (defaults 1e-4 and 1e-4). A purely absolute 1e-4 is not a
property float32 can promise for deep networks: at 1x3x64x64, freshly built ResNet-34/50 presets
have stride-32 features up to ~50-90, and their ONNX outputs differ from eager torch by
0.6-1.5e-4 depending on the seed, while eager torch itself differs from a float64 run by
~0.6-0.9e-4 (onnxruntime is the closer of the two); relative to scale that is ~2e-6. A wrong
export (a dropped op, a frozen random draw) differs by a sizeable fraction of the scale.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path
from visionpipes.core.profile import eval_mode

Inputs = torch.Tensor | Sequence[torch.Tensor]


class ExportParityError(RuntimeError):
    """The exported model's outputs differ from the eager model's by more than the tolerance."""


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and how closely it matches the eager model.

    Attributes:
        path: the exported file.
        format: `"onnx"` or `"torchscript"`.
        max_abs_diff: largest absolute difference between eager and exported outputs, over all
            outputs, on the example inputs.
        max_rel_diff: each output's max abs difference divided by that output's largest
            absolute value (its scale); the largest over outputs.
        atol: absolute tolerance of the check.
        rtol: tolerance relative to each output's scale.
        exporter: which exporter wrote the file.
        opset: the ONNX opset (None for TorchScript).
    """

    path: Path
    format: str
    max_abs_diff: float
    max_rel_diff: float
    atol: float
    rtol: float
    exporter: str
    opset: int | None = None


def _as_args(example_inputs: Inputs) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(
        isinstance(t, torch.Tensor) for t in example_inputs
    ):
        return tuple(example_inputs)
    raise TypeError(
        f"example_inputs must be a tensor or a non-empty tuple/list of tensors, got {type(example_inputs).__name__}."
    )


def _flatten_outputs(out: Any) -> list[torch.Tensor]:
    """The tensors of a model output: a tensor, or (nested) lists/tuples of tensors."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in _flatten_outputs(item)]
    raise TypeError(f"export supports models returning tensors or lists/tuples of tensors, got {type(out).__name__}.")


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def compare_outputs(
    reference: Sequence[np.ndarray], actual: Sequence[np.ndarray], *, atol: float, rtol: float, what: str
) -> tuple[float, float]:
    """Check exported outputs against eager ones: output i passes when
    `max|actual_i - reference_i| <= atol + rtol * max|reference_i|`.

    Returns:
        `(max_abs_diff, max_rel_diff)` over all outputs (rel: each output's diff divided by its
        largest absolute value).

    Raises:
        ExportParityError: if the number or shapes of outputs differ, NaNs appear in different
            places, or an output is beyond tolerance.

    Example:
        >>> compare_outputs([np.array([1.0, 2.0])], [np.array([1.0, 2.5])], atol=1.0, rtol=0.0, what="x")
        (0.5, 0.25)
    """
    if len(reference) != len(actual):
        raise ExportParityError(f"{what} returns {len(actual)} outputs, the eager model {len(reference)}.")
    worst_abs = worst_rel = 0.0
    failures = []
    for i, (ref, got) in enumerate(zip(reference, actual)):
        ref = np.asarray(ref, dtype=np.float64)
        got = np.asarray(got, dtype=np.float64)
        if ref.shape != got.shape:
            raise ExportParityError(f"{what} output {i} has shape {got.shape}, the eager model {ref.shape}.")
        nan = np.isnan(ref)
        if not np.array_equal(nan, np.isnan(got)):
            raise ExportParityError(f"{what} output {i} has NaNs where the eager model has none, or vice versa.")
        if nan.all():
            continue
        diff = float(np.max(np.abs(ref - got)[~nan]))
        scale = float(np.max(np.abs(ref[~nan])))
        rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
        worst_abs, worst_rel = max(worst_abs, diff), max(worst_rel, rel)
        if not diff <= atol + rtol * scale:
            failures.append(f"output {i}: max abs diff {diff:.3g} > {atol:g} + {rtol:g} x scale {scale:.3g}")
    if failures:
        raise ExportParityError(f"{what} differs from the eager model ({'; '.join(failures)}); no file was written.")
    return worst_abs, worst_rel


@contextlib.contextmanager
def _quiet_deprecations() -> Iterator[None]:
    """Silence torch's deprecation notices for the exporters we chose on purpose (see module doc)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=r".*The feature will be removed.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated.*", category=FutureWarning)
        yield


def _default_names(prefix: str, n: int) -> list[str]:
    return [prefix] if n == 1 else [f"{prefix}_{i}" for i in range(n)]


def export_onnx(
    model: nn.Module,
    example_inputs: Inputs,
    path: str | os.PathLike,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str] | Sequence[int]] | None = None,
    opset: int = 17,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    dynamo: bool = False,
    threads: int | None = None,
    metadata: Mapping[str, str] | None = None,
) -> ExportReport:
    """Export `model` to an ONNX file and check it in onnxruntime against the eager model.

    The model runs in eval mode (its own mode is restored afterwards). The eager outputs on
    `example_inputs` are compared with the ONNX model's outputs in onnxruntime on the same inputs;
    the file appears at `path` only if every output's max abs difference is within
    `atol + rtol * scale`, scale being that output's largest absolute value (see the module doc).

    Args:
        model: a module returning a tensor or a list/tuple of tensors.
        example_inputs: a tensor or a tuple of tensors, passed positionally.
        path: the `.onnx` file to write (its folder must exist).
        input_names: one name per input; default `input` (or `input_0`, `input_1`, ...).
        output_names: one name per output tensor; default `output` (or `output_0`, ...).
        dynamic_axes: axes that may vary at run time, e.g. `{"input": {0: "batch"}}`.
        opset: ONNX opset version.
        atol: absolute tolerance.
        rtol: tolerance relative to each output's scale (0: a purely absolute check).
        dynamo: use torch's torch.export-based exporter instead of the TorchScript-based one.
        threads: onnxruntime intra-op threads for the check (None: the project's count, as `OnnxRunner`).
        metadata: key/value strings stored in the model's `metadata_props` (what a runtime needs
            besides the graph, e.g. a pre-processing setting); `OnnxRunner.metadata` reads them.

    Returns:
        An `ExportReport` with the max abs and relative differences.

    Raises:
        ExportParityError: if an output differs beyond tolerance (no file is written).
        UserError: if the folder of `path` does not exist.
        ValueError: if names or dynamic axes do not match the inputs/outputs.
        TypeError: if inputs or outputs are not tensors / lists of tensors.

    Example:
        >>> import tempfile
        >>> tmp = Path(tempfile.mkdtemp())
        >>> report = export_onnx(nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8), tmp / "conv.onnx")
        >>> report.max_abs_diff < 1e-5
        True
    """
    args = _as_args(example_inputs)
    path = Path(path)
    with eval_mode(model):
        with torch.inference_mode():
            reference = [_to_numpy(t) for t in _flatten_outputs(model(*args))]
        input_names = list(input_names) if input_names is not None else _default_names("input", len(args))
        output_names = list(output_names) if output_names is not None else _default_names("output", len(reference))
        if len(input_names) != len(args):
            raise ValueError(f"{len(input_names)} input_names given for {len(args)} inputs.")
        if len(output_names) != len(reference):
            raise ValueError(f"{len(output_names)} output_names given for {len(reference)} output tensors.")
        unknown = set(dynamic_axes or {}) - set(input_names) - set(output_names)
        if unknown:
            raise ValueError(f"dynamic_axes names {sorted(unknown)} are neither input nor output names.")

        kwargs: dict[str, Any] = {
            "input_names": input_names,
            "output_names": output_names,
            "dynamic_axes": dict(dynamic_axes) if dynamic_axes else None,
            "opset_version": opset,
        }
        has_dynamo_flag = "dynamo" in inspect.signature(torch.onnx.export).parameters
        if dynamo:
            if not has_dynamo_flag:
                raise ValueError(f"dynamo=True needs torch >= 2.5 (this is {torch.__version__}).")
            kwargs.update(dynamo=True, external_data=False, verbose=False)
            exporter = "torch.onnx.export(dynamo=True)"
        else:
            if has_dynamo_flag:
                kwargs["dynamo"] = False
            kwargs["do_constant_folding"] = True
            exporter = "torch.onnx.export(dynamo=False)"

        with atomic_path(path) as tmp:
            with _quiet_deprecations(), torch.no_grad():
                torch.onnx.export(model, args, str(tmp), **kwargs)
            if metadata:
                import onnx

                proto = onnx.load(str(tmp))
                onnx.helper.set_model_props(proto, {str(k): str(v) for k, v in metadata.items()})
                onnx.save(proto, str(tmp))
            runner = OnnxRunner(tmp, threads=threads)
            actual = runner(*args)
            diff, rel = compare_outputs(
                reference, actual, atol=atol, rtol=rtol, what=f"ONNX export of {type(model).__name__}"
            )
    return ExportReport(path, "onnx", diff, rel, atol, rtol, exporter, opset)


def export_torchscript(
    model: nn.Module,
    example_inputs: Inputs,
    path: str | os.PathLike,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-4,
) -> ExportReport:
    """Trace `model` with `torch.jit.trace`, save it, reload it and check it against the eager model.

    Tracing records the ops run on `example_inputs`: Python control flow that depends on tensor
    values is frozen (the parity check only sees the example inputs). The file appears at `path`
    only if the reloaded module's outputs are within tolerance of the eager ones (as in `export_onnx`).

    Args:
        model: a module returning a tensor or a list/tuple of tensors.
        example_inputs: a tensor or a tuple of tensors.
        path: the `.pt` file to write (its folder must exist).
        atol: absolute tolerance.
        rtol: tolerance relative to each output's scale.

    Returns:
        An `ExportReport` with the max abs and relative differences.

    Raises:
        ExportParityError: if an output differs beyond tolerance (no file is written).
        UserError: if the folder of `path` does not exist.
        TypeError: if inputs or outputs are not tensors / lists of tensors.
    """
    args = _as_args(example_inputs)
    path = Path(path)
    device = args[0].device
    with eval_mode(model):
        with torch.inference_mode():
            reference = [_to_numpy(t) for t in _flatten_outputs(model(*args))]
        with atomic_path(path) as tmp, _quiet_deprecations():
            with torch.no_grad():
                # check_trace=False: the reload-and-compare below is the check (and runs once, not twice).
                traced = torch.jit.trace(model, args, strict=False, check_trace=False)
            torch.jit.save(traced, str(tmp))
            loaded = torch.jit.load(str(tmp), map_location=device)
            with torch.inference_mode():
                actual = [_to_numpy(t) for t in _flatten_outputs(loaded(*args))]
            diff, rel = compare_outputs(
                reference, actual, atol=atol, rtol=rtol, what=f"TorchScript export of {type(model).__name__}"
            )
    return ExportReport(path, "torchscript", diff, rel, atol, rtol, "torch.jit.trace")


_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


class OnnxRunner:
    """An onnxruntime session over an ONNX file, called on numpy arrays (or tensors).

    Args:
        path: the `.onnx` file.
        threads: intra-op threads (None: the project's count, `settings.default_threads()`: every
            logical core unless `VISIONPIPES_THREADS` says otherwise. onnxruntime's own default counts
            physical cores only, which ran the driving detector 1.5x slower on the 2-vCPU machines here).
        providers: execution providers in order of preference; default CUDA first when this
            onnxruntime build has it, then CPU.

    Raises:
        UserError: if the file is missing or is not a model onnxruntime can load.

    Example:
        >>> import tempfile
        >>> tmp = Path(tempfile.mkdtemp())
        >>> _ = export_onnx(nn.Linear(4, 2), torch.ones(1, 4), tmp / "fc.onnx")
        >>> runner = OnnxRunner(tmp / "fc.onnx", threads=1)
        >>> runner.input_names, [o.shape for o in runner(np.ones((1, 4), np.float32))]
        (['input'], [(1, 2)])
    """

    def __init__(
        self, path: str | os.PathLike, threads: int | None = None, providers: Sequence[str] | None = None
    ) -> None:
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"ONNX model {self.path} does not exist.")
        from visionpipes.core.settings import default_threads

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads if threads is not None else default_threads()
        options.inter_op_num_threads = 1
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=list(providers))
        except (ort_errors.Fail, ort_errors.InvalidGraph, ort_errors.InvalidProtobuf, ort_errors.NoSuchFile) as err:
            raise UserError(f"ONNX model {self.path} cannot be loaded by onnxruntime: {err}") from None
        self._inputs = self.session.get_inputs()

    @property
    def input_names(self) -> list[str]:
        """Names of the model's inputs, in order."""
        return [i.name for i in self._inputs]

    @property
    def output_names(self) -> list[str]:
        """Names of the model's outputs, in order."""
        return [o.name for o in self.session.get_outputs()]

    @property
    def metadata(self) -> dict[str, str]:
        """The model's `metadata_props` (see `export_onnx(metadata=...)`)."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    @property
    def providers(self) -> list[str]:
        """Execution providers the session uses."""
        return list(self.session.get_providers())

    def __call__(self, *inputs: Any) -> list[np.ndarray]:
        """Run the model: positional arrays in `input_names` order, or one dict name -> array.

        Floating arrays are cast to the model's input precision (float64 -> float32).

        Raises:
            ValueError: if the inputs do not match the model's inputs (count, names, shapes).
        """
        if len(inputs) == 1 and isinstance(inputs[0], Mapping):
            feed = dict(inputs[0])
            missing = set(self.input_names) - set(feed)
            extra = set(feed) - set(self.input_names)
            if missing or extra:
                raise ValueError(
                    f"ONNX model {self.path.name} takes inputs {self.input_names}; "
                    f"missing {sorted(missing)}, unknown {sorted(extra)}."
                )
        else:
            if len(inputs) != len(self._inputs):
                raise ValueError(
                    f"ONNX model {self.path.name} takes {len(self._inputs)} inputs {self.input_names}, got {len(inputs)}."
                )
            feed = dict(zip(self.input_names, inputs))
        for meta in self._inputs:
            value = feed[meta.name]
            if isinstance(value, torch.Tensor):
                value = _to_numpy(value)
            value = np.asarray(value)
            want = _ORT_DTYPES.get(meta.type)
            if want is not None and value.dtype != want and np.issubdtype(value.dtype, np.floating):
                value = value.astype(want)
            feed[meta.name] = value
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

        try:
            return list(self.session.run(None, feed))
        except InvalidArgument as err:
            raise ValueError(f"onnxruntime rejected the inputs of {self.path.name}: {err}") from None


__all__ = [
    "ExportParityError",
    "ExportReport",
    "OnnxRunner",
    "compare_outputs",
    "export_onnx",
    "export_torchscript",
]
