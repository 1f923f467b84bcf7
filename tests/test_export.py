"""`mambaout export` (ONNX through the dynamo exporter, torch.export .pt2) for every family's test variant, verified
against eager PyTorch; the metadata round trip; `predict --onnx` against `predict`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from mambaout import create_model, list_models
from mambaout.apps.export import (
    TOLERANCE,
    ExportError,
    export_model,
    export_program,
    preprocessing_metadata,
    read_pt2_metadata,
    verify,
)
from mambaout.apps.onnx_predict import OnnxClassifier, OnnxModelError, Preprocessing
from mambaout.cli import main
from mambaout.errors import InputSizeError
from mambaout.factory import save_checkpoint
from mambaout.ops import selective_scan
from mambaout.ops._scan_export import translation_table
from mambaout.tasks.classification.predict import eval_transform, predict_files

SIZE = (32, 32)
FAMILIES = list_models("*_test")  # new families' test variants are covered as they are registered


def scan_calls(model: torch.nn.Module) -> int:
    """How many times one forward calls the selective-scan op (the oracle for the .pt2 node count)."""
    calls = 0
    op = torch.ops.mambaout.selective_scan.default

    class Count(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            nonlocal calls
            calls += func is op or func is torch.ops.mambaout.selective_scan
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Count():
        model(torch.zeros(1, 3, *SIZE))
    return calls


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_exports_to_onnx_and_pt2_with_a_dynamic_batch(name, tmp_path):
    model = create_model(name, num_classes=7).eval()
    program = export_program(model, SIZE, dynamic_batch=True)  # one trace for both files
    onnx_report = export_model(model, "onnx", tmp_path / "m.onnx", SIZE, dynamic_batch=True, program=program)
    assert onnx_report.checked_batches == (1, 2) and onnx_report.max_rel_diff <= TOLERANCE
    stored = {p.key: p.value for p in onnx.load(tmp_path / "m.onnx").metadata_props}
    assert stored == preprocessing_metadata(model, SIZE)
    # the batch is symbolic in the file: batch 3 was never seen at export
    classifier = OnnxClassifier(tmp_path / "m.onnx")
    assert classifier.fixed_batch is None
    x = torch.randn(3, 3, *SIZE)
    with torch.no_grad():
        expected = model(x).numpy()
    got = classifier.logits(x.numpy())
    assert np.abs(got - expected).max() <= TOLERANCE * np.abs(expected).max()

    pt2_report = export_model(model, "pt2", tmp_path / "m.pt2", SIZE, dynamic_batch=True, program=program)
    assert pt2_report.max_rel_diff <= TOLERANCE
    assert pt2_report.scan_nodes == scan_calls(model)  # the custom op stays one node per call
    assert read_pt2_metadata(tmp_path / "m.pt2") == preprocessing_metadata(model, SIZE)


@pytest.mark.parametrize(("name", "fmt"), [("mambaout_test", "onnx"), ("vim_test", "pt2")])
def test_fixed_batch_export(name, fmt, tmp_path):
    model = create_model(name)
    report = export_model(model, fmt, tmp_path / f"m.{fmt}", SIZE)
    assert report.checked_batches == (1,) and report.max_rel_diff <= TOLERANCE
    if fmt == "onnx":
        shape = [d.dim_value for d in onnx.load(report.path).graph.input[0].type.tensor_type.shape.dim]
        assert shape == [1, 3, *SIZE]
    else:
        program = torch.export.load(report.path).module()
        with pytest.raises(Exception):  # noqa: B017  (torch's guard error type varies by version)
            program(torch.zeros(2, 3, *SIZE))


def test_verify_fails_with_the_numbers(tmp_path):
    model = create_model("mambaout_test")
    report = export_model(model, "onnx", tmp_path / "m.onnx", SIZE, verify_output=False)
    assert report.max_rel_diff is None
    with torch.no_grad():
        model.head.fc.weight.mul_(1.5)  # the file no longer computes what the model computes
    with pytest.raises(ExportError, match=r"max relative difference of \d\.\d+e[-+]\d+ > tolerance 1e-04"):
        verify(report, model)


def test_what_cannot_be_exported_is_refused_clearly(tmp_path):
    with pytest.raises(ExportError, match="features_only"):
        export_model(create_model("mambaout_test", features_only=True), "onnx", tmp_path / "f.onnx", SIZE)
    with pytest.raises(ExportError, match="unknown export format"):
        export_model(create_model("mambaout_test"), "tflite", tmp_path / "f.tflite", SIZE)
    with pytest.raises((InputSizeError, ExportError), match="30"):
        export_model(create_model("vim_test"), "onnx", tmp_path / "v.onnx", (30, 30))
    assert not (tmp_path / "v.onnx").exists() and not (tmp_path / "f.onnx").exists()


def test_preprocessing_matches_timm_eval_transform():
    model = create_model("mambaout_test")
    prep = Preprocessing.from_metadata(preprocessing_metadata(model, SIZE))
    rng = np.random.default_rng(0)
    for size in ((50, 40), (40, 50), (32, 32), (300, 17)):
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        expected = eval_transform(model, SIZE)(image).numpy()
        np.testing.assert_allclose(prep(image), expected, atol=1e-5)


def test_cli_export_then_predict_onnx_agrees_with_predict(tmp_path, capsys):
    names = [f"shape {i}" for i in range(5)]
    model = create_model("mambaout_test", num_classes=5)
    save_checkpoint(model, tmp_path / "tiny.safetensors", class_names=names)
    out = tmp_path / "tiny.onnx"
    argv = ["export", "mambaout_test", "--checkpoint", str(tmp_path / "tiny.safetensors"), "--img-size", "32"]
    assert main([*argv, "--format", "onnx", "--output", str(out)]) == 0
    assert "max relative difference" in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    trained = create_model("mambaout_test", checkpoint=tmp_path / "tiny.safetensors").eval()
    for batch in (1, 3):  # no batch option: the batch is dynamic, as timm's onnx_export.py makes it
        x = torch.randn(batch, 3, *SIZE)
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            want = trained(x).numpy()
        assert got.shape == want.shape and np.abs(got - want).max() <= TOLERANCE * np.abs(want).max()
    rng = np.random.default_rng(1)
    images = []
    for i in range(3):
        images.append(tmp_path / f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, (45, 60, 3), dtype=np.uint8)).save(images[-1])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert main(["predict", "--onnx", str(out), *map(str, images), str(tmp_path / "bad.png"), "--json"]) == 1
    captured = capsys.readouterr()
    got = json.loads(captured.out)
    assert "bad.png" in captured.err and "not an image" in captured.err
    expected, _ = predict_files(create_model("mambaout_test", checkpoint=tmp_path / "tiny.safetensors"), images,
                                input_size=SIZE, fold_norms=False)
    assert [row["image"] for row in got] == [p.path for p in expected]
    for row, prediction in zip(got, expected):
        assert [g["label"] for g in row["top"]] == [g.label for g in prediction.top]
        for g, e in zip(row["top"], prediction.top):
            assert abs(g["probability"] - e.probability) < 1e-4


def test_predict_onnx_refuses_files_without_metadata(tmp_path, capsys):
    model = create_model("mambaout_test")
    report = export_model(model, "onnx", tmp_path / "m.onnx", SIZE, verify_output=False)
    proto = onnx.load(report.path)
    del proto.metadata_props[:]
    onnx.save(proto, tmp_path / "bare.onnx")
    with pytest.raises(OnnxModelError, match="mambaout export"):
        OnnxClassifier(tmp_path / "bare.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["predict", "--onnx", str(tmp_path / "junk.onnx"), str(image)]) == 11
    assert "cannot open ONNX file" in capsys.readouterr().err


def test_predict_without_images_is_a_usage_error(capsys):
    assert main(["predict", "mambaout_test"]) == 2
    assert "at least one IMAGE" in capsys.readouterr().err


class _Scan(torch.nn.Module):
    """One selective scan with every optional input, B/C in `groups` groups (1: Vim's ungrouped (batch, N, L))."""

    def __init__(self, dim: int, state: int, groups: int):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.A = torch.nn.Parameter(-torch.rand(dim, state, generator=generator) - 0.1)
        self.D = torch.nn.Parameter(torch.randn(dim, generator=generator))
        self.delta_bias = torch.nn.Parameter(torch.randn(dim, generator=generator))
        self.groups = groups

    def forward(self, u, delta, B, C, z):
        return selective_scan(
            u, delta, self.A, B, C, D=self.D, z=z, delta_bias=self.delta_bias, delta_softplus=True,
            return_last_state=True,
        )


@pytest.mark.parametrize("groups", [1, 4])
def test_onnx_scan_agrees_with_the_op_and_never_materialises_the_state_over_time(groups, tmp_path):
    batch, dim, state, length = 2, 64, 8, 64
    module = _Scan(dim, state, groups).eval()
    bc_shape = (batch, state, length) if groups == 1 else (batch, groups, state, length)
    generator = torch.Generator().manual_seed(1)
    inputs = [
        torch.randn(batch, dim, length, generator=generator),
        3 * torch.randn(batch, dim, length, generator=generator),
    ]
    inputs += [torch.randn(bc_shape, generator=generator) for _ in range(2)] + [torch.randn(batch, dim, length)]
    inputs[1][:, :, :3] += 30  # softplus's identity branch (delta > 20) is taken at the first steps
    program = torch.export.export(module, tuple(inputs), strict=False)
    path = tmp_path / "scan.onnx"
    torch.onnx.export(program, dynamo=True, custom_translation_table=translation_table()).save(str(path))

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)})
    with torch.no_grad():
        expected = module(*inputs)
    for g, e in zip(got, expected):  # the output and the last state
        assert np.abs(g - e.numpy()).max() <= TOLERANCE * np.abs(e.numpy()).max()

    # The (L, batch, dim, N) terms exp(delta * A) and delta * u * B stay inside the Scan body, one step at a time:
    # materialised, they made VMamba-T need 15 GB at batch 16.
    events = json.loads(Path(session.end_profiling()).read_text())
    outputs = [int(e["args"]["output_size"]) for e in events if e.get("cat") == "Node" and "output_size" in e["args"]]
    state_over_time = batch * dim * state * length * 4
    assert outputs and max(outputs) < state_over_time / 4
