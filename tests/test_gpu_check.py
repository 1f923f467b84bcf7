"""benchmarks/gpu_check.py in its CPU smoke version: every section runs and passes, and its checks can fail."""

import importlib.util
import json
import sys

import pytest
import torch

from conftest import REPO


def _load(name: str):
    """A benchmark script as a module (benchmarks/ is no package); registered first, as dataclasses look it up."""
    if name in sys.modules:
        return sys.modules[name]
    if str(REPO / "benchmarks") not in sys.path:  # as when run as a script: its siblings (_machine) import
        sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gpu_check = _load("gpu_check")
CPU = torch.device("cpu")


def test_smoke_run_passes_every_row_of_every_section(tmp_path, capsys):
    assert gpu_check.main(["--device", "cpu", "--smoke", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check_smoke.json").read_text())
    rows = report["rows"]
    assert [r["check"] for r in rows if r["status"] != "PASS"] == []
    assert {r["section"] for r in rows} == set(gpu_check.SECTIONS)
    assert [t["section"] for t in report["sections"]] == list(gpu_check.SECTIONS)
    settings = gpu_check.make_settings(CPU, smoke=True)
    # a forward and a backward row per scan case and dtype, one row per family, per DDP, per throughput case
    assert sum(r["section"] == "scan" for r in rows) == 4 * len(settings.scan_cases)
    assert sum(r["section"] == "train" for r in rows) == len(settings.train_models)
    assert sum(r["section"] == "throughput" for r in rows) == len(settings.speeds)
    for row in rows:
        if row["section"] == "train":
            losses = row["data"]["losses"]
            assert len(losses) == settings.train_steps and losses[-1] < losses[0]
    printed = capsys.readouterr().out
    table = (tmp_path / "gpu_check_smoke.md").read_text()
    assert "| section | check | result | measured | published | s |" in table and table.strip() in printed
    assert "CPU " in table.splitlines()[0] and "total" in table


def _scan_settings():
    return gpu_check.make_settings(CPU, smoke=True, scan_backend="chunked")


def test_scan_row_flags_a_perturbed_forward():
    exact = gpu_check.backend_scan("chunked")

    def off_by_a_thousandth(**kwargs):
        out, last = exact(**kwargs)
        return out * 1.001, last

    case = gpu_check.SMOKE_SCANS[2]
    good = gpu_check.scan_rows(case, torch.float32, _scan_settings())
    bad = gpu_check.scan_rows(case, torch.float32, _scan_settings(), scan=off_by_a_thousandth, name="perturbed")
    assert [r.status for r in good] == ["PASS", "PASS"]
    assert [r.status for r in bad] == ["FAIL", "FAIL"]  # the output and every gradient through it are off
    assert bad[0].data["errors"]["out"][1] > gpu_check.SCAN_TOLERANCES[torch.float32][0]


def test_scan_row_flags_a_missing_or_wrong_gradient():
    exact = gpu_check.backend_scan("chunked")

    def detached_D(**kwargs):
        return exact(**{**kwargs, "D": kwargs["D"].detach()})

    class WrongDeltaBias(torch.autograd.Function):
        """The identity forward, twice the gradient backward: a backward-only bug."""

        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            return 2 * grad

    def doubled_bias_grad(**kwargs):
        return exact(**{**kwargs, "delta_bias": WrongDeltaBias.apply(kwargs["delta_bias"])})

    case = gpu_check.SMOKE_SCANS[0]
    missing = gpu_check.scan_rows(case, torch.float32, _scan_settings(), scan=detached_D, name="no dD")
    assert [r.status for r in missing] == ["PASS", "FAIL"]
    assert missing[1].measured.startswith("no gradient for D")
    wrong = gpu_check.scan_rows(case, torch.bfloat16, _scan_settings(), scan=doubled_bias_grad, name="2 x dbias")
    assert [r.status for r in wrong] == ["PASS", "FAIL"]
    assert wrong[1].data["errors"]["delta_bias"][1] > 0.5


def test_a_failing_row_is_reported_and_sets_the_exit_code(tmp_path, monkeypatch):
    def broken(settings):
        raise RuntimeError("NCCL error: unhandled system error\nsecond line")

    monkeypatch.setattr(gpu_check, "ddp_row", broken)
    assert gpu_check.main(["--device", "cpu", "--smoke", "--sections", "ddp", "--out", str(tmp_path)]) == 1
    (row,) = json.loads((tmp_path / "gpu_check_smoke.json").read_text())["rows"]
    assert row["status"] == "FAIL" and row["measured"] == "RuntimeError: NCCL error: unhandled system error"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_without_cuda_the_default_device_exits_with_a_message(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
