"""`mambaout benchmark`: every case in a fresh child, failures recorded, results as JSON, CSV and PNG."""

import csv
import json

import pytest
import torch
from matplotlib.image import imread

from mambaout.analysis.benchmark import COLUMNS, BenchmarkError, run_benchmark
from mambaout.analysis.benchmark_case import Case, build_model, classify_failure, run_case
from mambaout.analysis.benchmark_plots import plot_accuracy_vs_macs
from mambaout.analysis.flops import count_macs, model_flops
from mambaout.cli import main
from mambaout.registry import UnknownModelError

FAST = dict(repeats=1, warmup=0, threads=1, matmul_size=256)  # one thread: 2 shared cores make OpenMP crawl


def _png_shape(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(path).shape


def test_sweep_writes_json_csv_and_plots(tmp_path):
    result = run_benchmark(["mambaout_test", "timm:resnet10t"], [32, 64], out=tmp_path, **FAST)

    data = json.loads((tmp_path / "results.json").read_text())
    assert data["meta"]["mode"] == "infer" and data["meta"]["threads"] == 1 and data["meta"]["matmul_gflops"] > 0
    rows = data["results"]
    assert rows == json.loads(json.dumps(result.rows))
    # size by size, so that the models compared at one size run close together in time
    assert [(r["model"], r["height"], r["width"]) for r in rows] == [
        ("mambaout_test", 32, 32), ("timm:resnet10t", 32, 32), ("mambaout_test", 64, 64), ("timm:resnet10t", 64, 64)
    ]
    for r in rows:
        assert set(r) == set(COLUMNS)
        assert r["status"] == "ok", r["message"]
        assert r["latency_ms_min"] <= r["latency_ms_p25"] <= r["latency_ms_median"] <= r["latency_ms_max"]
        assert r["images_per_s"] == pytest.approx(1e3 / r["latency_ms_median"], rel=1e-12)
        assert r["memory_kind"] == "cpu_peak_rss"
        assert r["peak_memory_mb"] >= r["baseline_memory_mb"] > 50  # torch alone is resident
        assert r["memory_increase_mb"] == pytest.approx(r["peak_memory_mb"] - r["baseline_memory_mb"])
        assert r["effective_gflops"] == pytest.approx(2 * r["gmacs"] * r["images_per_s"], rel=1e-12)
        assert r["peak_fraction"] == pytest.approx(r["effective_gflops"] / data["meta"]["matmul_gflops"], rel=1e-12)
    ours = [r for r in rows if r["source"] == "mambaout"]
    assert [r["gmacs"] for r in ours] == [model_flops("mambaout_test", size=(s, s)).macs / 1e9 for s in (32, 64)]
    assert ours[0]["family"] == "mambaout"
    with torch.device("meta"):
        resnet = build_model("timm:resnet10t")
    assert [r["gmacs"] for r in rows if r["source"] == "timm"] == [
        count_macs(resnet, (1, 3, s, s)).macs / 1e9 for s in (32, 64)
    ]

    with (tmp_path / "results.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        table = list(reader)
    assert [(r["model"], int(r["height"]), r["status"]) for r in table] == [
        (r["model"], r["height"], r["status"]) for r in rows
    ]
    assert [float(r["images_per_s"]) for r in table] == [r["images_per_s"] for r in rows]

    # no published top-1 for either model: no accuracy plot
    assert sorted(p.name for p in result.files) == ["memory.png", "results.csv", "results.json", "throughput.png"]
    assert _png_shape(tmp_path / "throughput.png")[:2] == (540, 840)  # 7 x 4.5 in at 120 dpi
    assert _png_shape(tmp_path / "memory.png")[:2] == (540, 1440)


def test_fixed_size_timm_models_are_built_at_the_benchmarked_size():
    with torch.device("meta"):
        vit = build_model("timm:test_vit", (64, 96))  # a timm ViT that refuses any size but its img_size
    assert vit.patch_embed.img_size == (64, 96)
    assert count_macs(vit, (1, 3, 64, 96)).macs > 0


def test_out_of_memory_is_recorded_and_the_sweep_goes_on(tmp_path):
    # 16 MiB over the built model: enough at 32x32, far too little for 2048x2048 (its stem output alone is 32 MiB)
    result = run_benchmark(["mambaout_test"], [32, 2048, 4096, 64], memory_limit_mb=16, out=tmp_path, **FAST)
    rows = {r["height"]: r for r in result.rows}
    assert [rows[s]["status"] for s in (32, 2048, 4096, 64)] == ["ok", "oom", "skipped", "ok"]
    assert "allocate memory" in rows[2048]["message"]
    assert rows[4096]["message"] == "not run: oom at 2048x2048"
    assert rows[2048]["images_per_s"] is None and rows[2048]["gmacs"] > rows[32]["gmacs"]
    assert json.loads((tmp_path / "results.json").read_text())["results"][1]["status"] == "oom"


def test_a_case_past_its_timeout_is_killed():
    # ten thousand batches cannot finish in a second on any machine
    row = run_case(Case("mambaout_test", (64, 64), repeats=10_000, warmup=0, threads=1), timeout=1.0)
    assert row["status"] == "timeout"
    assert 1.0 <= row["wall_s"] < 30


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom"),
        (MemoryError(), "oom"),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"), "oom"),
        (RuntimeError("shape mismatch"), "error"),
        (ValueError("out of memory"), "error"),
    ],
)
def test_failures_are_classified(error, status):
    assert classify_failure(error) == status


def test_unknown_names_fail_before_any_case_runs(tmp_path):
    with pytest.raises(UnknownModelError, match="Closest: mambaout_test"):
        run_benchmark(["mambaout_test", "mambaout_tset"], [32], out=tmp_path / "a")
    with pytest.raises(UnknownModelError, match="timm:resnet10t"):
        run_benchmark(["timm:resnet10tt"], [32], out=tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(precision="fp8"), "precision must be one of"),
        (dict(mode="eval"), "mode must be one of"),
        (dict(device="tpu"), "device"),
        (dict(batch=0), "must be positive"),
        (dict(scan_backend="cuda"), "scan backend must be one of"),
    ],
)
def test_bad_options_fail_clearly(options, message):
    with pytest.raises(BenchmarkError, match=message):
        run_benchmark(["mambaout_test"], [32], **options)


def test_cli_train_mode_and_errors(tmp_path, capsys):
    out = tmp_path / "train"
    argv = ["benchmark", "--models", "mambaout_test", "--img-size", "32", "--mode", "train", "--precision", "bf16"]
    assert main([*argv, "--repeats", "1", "--warmup", "1", "--threads", "1", "--output", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    (row,) = data["results"]
    assert row["status"] == "ok", row["message"]
    assert (row["mode"], row["precision"]) == ("train", "bf16")
    assert data["meta"]["flops_per_mac"] == 6  # forward + backward ~ 3 forwards
    assert row["effective_gflops"] == pytest.approx(6 * row["gmacs"] * row["images_per_s"], rel=1e-12)
    assert "mambaout_test" in capsys.readouterr().out

    assert main(["benchmark", "--models", "nope_tiny", "--output", str(tmp_path / "x")]) == 3
    assert "error: unknown model 'nope_tiny'" in capsys.readouterr().err
    assert main(["benchmark", "--models", "mambaout_test", "--precision", "fp16", "--device", "tpu"]) == 7
    assert "error: unknown device 'tpu'" in capsys.readouterr().err


def test_accuracy_plot_has_the_models_with_a_published_top1(tmp_path):
    models = ["mambaout_femto", "mambaout_test", "timm:resnet10t", "deit_tiny", "mambaout_femto"]
    path = plot_accuracy_vs_macs(models, tmp_path / "a.png")
    assert path == tmp_path / "a.png" and _png_shape(path)[:2] == (540, 840)
    assert plot_accuracy_vs_macs(["mambaout_test", "timm:resnet10t"], tmp_path / "b.png") is None
    assert not (tmp_path / "b.png").exists()
