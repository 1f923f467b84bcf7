"""`mambaout export`: a model as an ONNX file (dynamo exporter) or a `torch.export` program (.pt2), verified.

The selective scan is one custom op: in a .pt2 program it stays one node (loading the program needs `import
mambaout` to register it); in ONNX it becomes a `Scan` over time (see `ops/_scan_export.py`). The model's
preprocessing and class names travel with the file (ONNX metadata_props; a JSON file inside the .pt2 archive), so
`predict --onnx` needs nothing else. Verification runs the file (ONNX Runtime's CPU provider, or the reloaded
program) against the eager model on seeded inputs and fails with the numbers when they differ.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import InputSizeError, MambaoutError, check_input_size
from ..tasks.classification.predict import class_names

FORMATS = ("onnx", "pt2")
# max |exported - eager| / max |eager| over the verify inputs: fp32 kernels summing in another order stay ~1e-6
TOLERANCE = 1e-4
METADATA_FILE = "mambaout_preprocessing.json"  # inside a .pt2 archive (torch.export.save's extra_files)
VERIFY_BATCHES = (1, 2)  # dynamic-batch files are checked at both; fixed ones at their export batch
ONNX_OPSET = 18


class ExportError(MambaoutError, RuntimeError):
    """The model cannot be exported, or the file does not compute what the model computes."""

    exit_code = 11


@dataclass
class ExportReport:
    path: Path
    format: str
    input_size: tuple[int, int]
    dynamic_batch: bool
    seconds: float
    max_rel_diff: float | None = None  # None: not verified
    tolerance: float = TOLERANCE
    checked_batches: tuple[int, ...] = ()
    scan_nodes: int = 0  # custom-op nodes kept in a .pt2 program
    metadata: dict[str, str] = field(default_factory=dict)

    def format_lines(self) -> str:
        lines = [f"wrote {self.path} ({self.format}, input {self.input_size[0]}x{self.input_size[1]}, "
                 f"batch {'dynamic' if self.dynamic_batch else 1}, {self.seconds:.1f} s)"]
        if self.format == "pt2":
            lines.append(f"  selective-scan custom-op nodes kept: {self.scan_nodes}")
        if self.max_rel_diff is not None:
            batches = ", ".join(map(str, self.checked_batches))
            lines.append(f"  verified against eager PyTorch at batch {batches}: max relative difference "
                         f"{self.max_rel_diff:.2e} (tolerance {self.tolerance:.0e})")
        return "\n".join(lines)


def model_input_size(model: nn.Module, input_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """`input_size` (checked), else the model's pretrained_cfg input size."""
    if input_size is not None:
        check_input_size(*input_size)
        return int(input_size[0]), int(input_size[1])
    height, width = model.pretrained_cfg["input_size"][-2:]
    return int(height), int(width)


def preprocessing_metadata(model: nn.Module, input_size: tuple[int, int]) -> dict[str, str]:
    """What a deployed file needs to preprocess and name its outputs: string values, as ONNX metadata holds them."""
    cfg = model.pretrained_cfg
    return {
        "mambaout.model_name": str(getattr(model, "model_name", type(model).__name__)),
        "mambaout.input_size": json.dumps([3, *input_size]),
        "mambaout.mean": json.dumps(list(cfg["mean"])),
        "mambaout.std": json.dumps(list(cfg["std"])),
        "mambaout.crop_pct": json.dumps(cfg.get("crop_pct", 0.875)),
        "mambaout.interpolation": str(cfg.get("interpolation", "bicubic")),
        "mambaout.class_names": json.dumps(class_names(model)),
    }


def _verify_inputs(input_size: tuple[int, int], batches: tuple[int, ...]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(b, 3, *input_size, generator=generator) for b in batches]


def _relative_difference(got: np.ndarray, expected: np.ndarray) -> float:
    scale = max(float(np.abs(expected).max()), 1e-12)
    return float(np.abs(got.astype(np.float64) - expected).max()) / scale


def export_program(model: nn.Module, input_size: tuple[int, int], dynamic_batch: bool) -> torch.export.ExportedProgram:
    """`torch.export` of the model at `input_size`, batch 1 or dynamic; ExportError naming what failed."""
    # a batch of 2 as the example: torch.export specialises a batch of 1 to the constant 1
    example = torch.randn(2 if dynamic_batch else 1, 3, *input_size)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    try:
        return torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as error:
        name = getattr(model, "model_name", type(model).__name__)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(f"torch.export cannot trace {name} at {input_size[0]}x{input_size[1]}: {first}") from error


def _to_onnx(program: torch.export.ExportedProgram, path: Path, metadata: dict[str, str]) -> None:
    from ..ops._scan_export import translation_table

    # the graph optimizer logs every node it leaves alone at INFO
    logging.getLogger("onnxscript").setLevel(max(logging.WARNING, logging.getLogger("onnxscript").level))
    try:
        onnx_program = torch.onnx.export(
            program, dynamo=True, custom_translation_table=translation_table(), opset_version=ONNX_OPSET,
            input_names=["image"], output_names=["logits"], optimize=True, verbose=False,
        )
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(f"the ONNX exporter failed: {first}") from error
    onnx_program.model.metadata_props.update(metadata)
    onnx_program.save(os.fspath(path))


def _scan_nodes(program: torch.export.ExportedProgram) -> int:
    from ..ops import selective_scan  # noqa: F401  (registers the op)

    target = torch.ops.mambaout.selective_scan.default
    return sum(node.target == target for node in program.graph.nodes)


def run_onnx(path: str | os.PathLike, images: np.ndarray, session=None) -> np.ndarray:
    """Logits from an ONNX file on ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    session = session or ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def verify(report: ExportReport, model: nn.Module, tolerance: float = TOLERANCE) -> ExportReport:
    """Run the written file against the eager model; ExportError with the numbers above `tolerance`."""
    batches = VERIFY_BATCHES if report.dynamic_batch else (1,)
    inputs = _verify_inputs(report.input_size, batches)
    with torch.no_grad():
        expected = [model(x).float().numpy() for x in inputs]
    if report.format == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(os.fspath(report.path), providers=["CPUExecutionProvider"])
        got = [run_onnx(report.path, x.numpy(), session) for x in inputs]
    else:
        program = torch.export.load(os.fspath(report.path)).module()
        with torch.no_grad():
            got = [program(x).float().numpy() for x in inputs]
    diffs = [_relative_difference(g, e) for g, e in zip(got, expected)]
    report.max_rel_diff, report.tolerance, report.checked_batches = max(diffs), tolerance, batches
    if not report.max_rel_diff <= tolerance:  # NaN fails too
        per_batch = ", ".join(f"batch {b}: {d:.3e}" for b, d in zip(batches, diffs))
        raise ExportError(
            f"verify failed for {report.path}: the {report.format} file differs from eager PyTorch by a max relative "
            f"difference of {report.max_rel_diff:.3e} > tolerance {tolerance:.0e} ({per_batch})"
        )
    return report


def default_output(name: str, fmt: str, input_size: tuple[int, int]) -> Path:
    return Path(f"{name}_{input_size[0]}x{input_size[1]}.{fmt}")


def export_model(
    model: nn.Module,
    fmt: str,
    output: str | os.PathLike | None = None,
    input_size: tuple[int, int] | None = None,
    dynamic_batch: bool = False,
    verify_output: bool = True,
    tolerance: float = TOLERANCE,
    program: torch.export.ExportedProgram | None = None,
) -> ExportReport:
    """Export a classifier made by `create_model` to ONNX or .pt2 in float32 and (by default) verify the file.

    `program` reuses an `export_program` of the same model, size and batch mode (one trace for both formats).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if not hasattr(model, "pretrained_cfg") or "num_classes" not in model.pretrained_cfg:
        raise ExportError("only classifiers made by create_model export here (features_only models have no head)")
    size = model_input_size(model, input_size)
    name = getattr(model, "model_name", type(model).__name__)
    path = Path(output) if output is not None else default_output(name, fmt, size)
    model = model.eval().float()
    try:  # the model's own size checks (patch multiples, ...) name the problem better than a trace failure
        with torch.no_grad():
            model(torch.zeros(1, 3, *size))
    except InputSizeError:
        raise
    except (ValueError, RuntimeError) as error:
        raise ExportError(f"{name} cannot run at {size[0]}x{size[1]}: {error}") from error
    metadata = preprocessing_metadata(model, size)
    start = time.perf_counter()
    program = program or export_program(model, size, dynamic_batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        _to_onnx(program, path, metadata)
    else:
        torch.export.save(program, os.fspath(path), extra_files={METADATA_FILE: json.dumps(metadata)})
    report = ExportReport(path, fmt, size, dynamic_batch, time.perf_counter() - start, metadata=metadata)
    if fmt == "pt2":
        report.scan_nodes = _scan_nodes(program)
    return verify(report, model, tolerance) if verify_output else report


def read_pt2_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The preprocessing metadata saved inside a .pt2 archive by `export_model`."""
    extra = {METADATA_FILE: ""}
    torch.export.load(os.fspath(path), extra_files=extra)
    return json.loads(extra[METADATA_FILE]) if extra[METADATA_FILE] else {}
