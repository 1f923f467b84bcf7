"""The `mambaout` console script, run as a user runs it (subprocess)."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

import mambaout
from conftest import console_script
from mambaout.data.synthetic import render


def run(*args, check_ok=True):
    result = subprocess.run([console_script(), *args], capture_output=True, text=True, timeout=300)
    if check_ok:
        assert result.returncode == 0, result.stderr
    return result


def test_models_table_lists_every_model_with_published_numbers():
    out = run("models").stdout
    for name in mambaout.list_models():
        assert name in out
    tiny = next(line for line in out.splitlines() if line.startswith("mambaout_tiny "))
    assert "26.5" in tiny and "4.5" in tiny and "82.7" in tiny
    assert "hf-hub:timm/mambaout_tiny.in1k/model.safetensors" in tiny
    rows = json.loads(run("models", "mambaout_*_rw", "--json").stdout)
    assert [r["name"] for r in rows] == mambaout.list_models("mambaout_*_rw")
    assert run("models", "nothing_matches*", check_ok=False).returncode == 1


def test_flops_tiny_prints_paper_numbers_with_a_stage_breakdown():
    out = run("flops", "mambaout_tiny").stdout
    assert "params: 26.5M" in out and "MACs: 4.5G" in out
    for row in ("stem", "stages.0", "stages.1", "stages.2", "stages.3", "head"):
        assert f"  {row} " in out
    stage_macs = [
        float(line.split()[2]) for line in out.splitlines() if line.strip().startswith(("stem", "stages", "head"))
    ]
    assert sum(stage_macs) == pytest.approx(4.486, abs=2e-3)


def test_flops_scales_with_size_and_batch():
    def total(*args):
        out = run("flops", "mambaout_femto", *args).stdout
        return float(out.split("(")[-1].split()[0])

    base = total()
    assert total("-b", "3") == pytest.approx(3 * base, rel=1e-3)  # printed to 3 decimals
    assert total("--img-size", "448") == pytest.approx(4 * base, rel=0.02)
    assert total("--img-size", "448", "224") == pytest.approx(2 * base, rel=0.02)


@pytest.mark.parametrize("size", [("0", "224"), ("-5", "10")])
def test_flops_bad_size_is_a_clear_error(size):
    result = run("flops", "mambaout_femto", "--img-size", *size, check_ok=False)
    assert result.returncode == 2
    assert "argument --img-size: must be >= 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_model_names_the_closest_ones():
    result = run("flops", "mambaout_tinyy", check_ok=False)
    assert result.returncode == 3
    assert "unknown model 'mambaout_tinyy'" in result.stderr and "mambaout_tiny" in result.stderr


@pytest.fixture
def trained_like_checkpoint(tmp_path):
    """A saved 3-class mambaout_test whose head makes 'circle' win on every input (known predictions)."""
    model = mambaout.create_model("mambaout_test", num_classes=3)
    with torch.no_grad():
        model.head.fc.weight.zero_()
        model.head.fc.bias.copy_(torch.tensor([0.0, 5.0, 1.0]))
    path = tmp_path / "shapes.safetensors"
    mambaout.save_checkpoint(model, path, class_names=["square", "circle", "star"])
    return path


def test_predict_uses_saved_class_names_and_reports_bad_files_but_predicts_the_rest(tmp_path, trained_like_checkpoint):
    good = []
    for i, name in enumerate(["circle", "star"]):
        path = tmp_path / f"{name}.png"
        render(name, seed=i, size=64).save(path)
        good.append(str(path))
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (40, 30), (10, 200, 30, 128)).save(rgba)
    good.append(str(rgba))
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    truncated = tmp_path / "truncated.png"
    render("dots", seed=3, size=64).save(tmp_path / "full.png")
    truncated.write_bytes((tmp_path / "full.png").read_bytes()[:300])
    bad = [str(tmp_path / "notes.jpg"), str(tmp_path / "empty.png"), str(truncated)]

    result = run(
        "predict",
        "mambaout_test",
        *good,
        *bad,
        "--checkpoint",
        str(trained_like_checkpoint),
        "--topk",
        "2",
        "--json",
        check_ok=False,
    )
    assert result.returncode != 0
    predictions = json.loads(result.stdout)
    assert [p["image"] for p in predictions] == good
    for p in predictions:
        assert [g["label"] for g in p["top"]] == ["circle", "star"]
        # the features are zeroed by the head's weights: logits are the biases (0, 5, 1)
        assert p["top"][0]["probability"] == pytest.approx(math.exp(5) / (1 + math.exp(5) + math.exp(1)), rel=1e-5)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3
    assert "notes.jpg" in errors[0] and "not an image" in errors[0]
    assert "empty.png" in errors[1] and "empty" in errors[1]
    assert "truncated.png" in errors[2] and "truncated" in errors[2]


def test_predict_text_output(tmp_path, trained_like_checkpoint):
    image = tmp_path / "a.png"
    render("circle", seed=0, size=64).save(image)
    out = run("predict", "mambaout_test", str(image), "--checkpoint", str(trained_like_checkpoint)).stdout
    lines = out.splitlines()
    assert lines[0] == str(image)
    assert "circle" in lines[1] and "(1)" in lines[1]


class _RunsCode:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['MARKER'], 'w').write('pwned')",))


def test_predict_refuses_a_checkpoint_that_would_run_code(tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pth"
    torch.save({"model": _RunsCode()}, evil)
    image = tmp_path / "a.png"
    render("circle", seed=0, size=64).save(image)
    result = subprocess.run(
        [console_script(), "predict", "mambaout_test", str(image), "--checkpoint", str(evil)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MARKER": str(marker)},
    )
    assert result.returncode == 4
    assert "refusing to load" in result.stderr and "could run code" in result.stderr
    assert not marker.exists()


def _predict_pretrained_offline(tmp_path, override: str, extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    image = tmp_path / "a.png"
    render("circle", seed=0, size=64).save(image)
    code = f"import sys, mambaout; from mambaout.cli import main;{override}sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, "predict", "mambaout_femto", str(image), "--pretrained"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TORCH_HOME": str(tmp_path), **extra_env},
    )


def test_predict_pretrained_without_network_names_the_url_and_the_alternative(tmp_path):
    # A loopback URL stands in for the unreachable release server (the Hub id removed so the URL path is the one
    # taken); the test never leaves this machine.
    override = (
        "cfg = mambaout.get_model_spec('mambaout_femto').pretrained_cfg; cfg.pop('hf_hub_id', None);"
        "cfg['url'] = 'http://127.0.0.1:9/mambaout_femto.pth';"
    )
    result = _predict_pretrained_offline(tmp_path, override, {})
    assert result.returncode == 4
    assert "http://127.0.0.1:9/mambaout_femto.pth" in result.stderr
    assert "--checkpoint PATH" in result.stderr


def test_predict_pretrained_with_the_hub_offline_names_the_repository_and_the_alternative(tmp_path):
    result = _predict_pretrained_offline(tmp_path, "", {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 4
    assert "timm/mambaout_femto.in1k" in result.stderr and "not in the Hugging Face cache" in result.stderr
    assert "--checkpoint PATH" in result.stderr
    assert "Traceback" not in result.stderr


def test_flops_transformer_equation_6():
    out = run("flops", "--transformer", "--dim", "384", "--tokens", "196").stdout
    assert "(2+r)·D = 2304" in out and "Mamba is not needed" in out
    long = run("flops", "--transformer", "--dim", "768", "--tokens", "5000").stdout
    assert "(2+r)·D = 4608" in long and "quadratic term dominates" in long
    bad = run("flops", "--transformer", "--dim", "384", check_ok=False)
    assert bad.returncode == 2 and "--tokens L" in bad.stderr


def test_old_spellings_warn_and_work_like_the_shared_flags(capsys):
    from mambaout.cli import main

    assert main(["flops", "mambaout_test", "--img-size", "64", "-b", "2"]) == 0
    expected = capsys.readouterr().out
    with pytest.warns(FutureWarning, match="--size is deprecated.*--img-size"):
        assert main(["flops", "mambaout_test", "--size", "64", "64", "--batch", "2"]) == 0
    assert capsys.readouterr().out == expected


def _commands() -> dict:
    import argparse

    from mambaout.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(subparsers.choices)


def test_each_shared_concept_has_one_flag_in_every_command():
    import argparse

    from mambaout.cli_options import SHARED_FLAGS

    commands = _commands()
    seen = {}
    for name, parser in commands.items():
        for action in parser._actions:
            if action.dest not in SHARED_FLAGS or not action.option_strings:
                continue
            if action.help == argparse.SUPPRESS:  # an old spelling: it must say what replaces it
                with pytest.warns(FutureWarning, match="deprecated"):
                    action(parser, argparse.Namespace(), ["2"] * (action.nargs if isinstance(action.nargs, int) else 1),
                           action.option_strings[0])
                continue
            assert SHARED_FLAGS[action.dest] in action.option_strings, (name, action.option_strings)
            seen.setdefault(action.dest, set()).add(name)
    image_commands = {"flops", "predict", "train", "study", "validate", "erf", "benchmark", "export", "demo",
                      "segment-data", "detect-data"}
    assert image_commands <= seen["img_size"]
    assert {"train", "segment-train", "detect-train"} <= seen["workers"] & seen["batch_size"] & seen["device"]
    assert {"predict", "validate", "export"} <= seen["checkpoint"] & seen["pretrained"]
    crop = next(a for a in commands["segment-train"]._actions if "--crop-size" in a.option_strings)
    assert crop.nargs == "+"  # one number or H W, mmseg's crop_size
    assert commands["segment-train"].parse_args(["d", "--crop-size", "48", "64"]).crop_size == (48, 64)
