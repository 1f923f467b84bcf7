"""Effective receptive field: where the centre feature looks, checked against geometry and finite differences."""

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

import mambaout
from mambaout.analysis.erf import (
    area_ratio,
    centroid,
    effective_receptive_field,
    feature_level,
    generated_images,
    log_scale,
    save_erf,
)
from mambaout.cli import main
from mambaout.data.synthetic import render

SMALL_DEIT = dict(depth=2, embed_dim=32, num_heads=2, img_size=64)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _model(name: str, **overrides):
    return mambaout.create_model(name, **overrides).eval()


def test_conv_erf_is_centred_and_falls_off_towards_the_borders():
    model = _model("mambaout_test")
    erf = effective_receptive_field(model, generated_images(model, (128, 128), 2))
    assert erf.shape == (128, 128)
    # A 4x4 last-stage map: the centre feature (2, 2) of this chain of padded stride-2 3x3 convolutions is centred
    # on pixel 2 * 32 = 64, the image centre; with random weights the peak lands within half a stride of it.
    assert centroid(erf) == pytest.approx((64, 64), abs=4)
    peak = np.unravel_index(erf.argmax(), erf.shape)
    assert abs(peak[0] - 64) <= 16 and abs(peak[1] - 64) <= 16
    yy, xx = np.indices(erf.shape)
    ring = np.maximum(abs(yy - 64), abs(xx - 64)) // 16  # square annuli 16 pixels wide, 0 at the centre
    profile = [erf[ring == r].mean() for r in range(4)]
    assert all(inner > outer for inner, outer in itertools.pairwise(profile)), profile
    assert erf[ring == 4].mean() < 1e-3 * profile[0]


def test_first_stage_erf_is_exactly_its_theoretical_receptive_field():
    # The stem's two padded 3x3 stride-2 convolutions see 7 pixels; stage 0's 7x7 depthwise conv on their stride-4
    # grid widens that to 7 + 6 * 4 = 31. A 64 input gives a 16x16 map whose centre feature 8 is centred on pixel 32.
    model = _model("mambaout_test")
    erf = effective_receptive_field(model, generated_images(model, (64, 64), 1), stage=0)
    rows, cols = np.nonzero(erf)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (17, 47, 17, 47)
    assert np.count_nonzero(erf) == 31 * 31


def _centre_target(model, image, index):
    features = model.forward_intermediates(image[None], indices=[index], intermediates_only=True, stop_early=True)[0]
    return features[0, :, features.shape[2] // 2, features.shape[3] // 2].relu().sum()


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("mambaout_test", {}),
        ("vmamba_test", {}),
        ("vmamba2_test", {}),
        ("vim_test", {}),
        ("deit_tiny", SMALL_DEIT),
    ],
)
def test_erf_agrees_with_finite_differences_for_every_family(name, overrides):
    model = _model(name, **overrides)
    image = next(generated_images(model, (32, 32), 1))
    erf = effective_receptive_field(model, [image])
    assert erf.shape == (32, 32) and np.isfinite(erf).all() and (erf >= 0).all() and erf.sum() > 0

    # Oracle: along d = sign(gradient) on a random half of the pixels, the directional derivative of the target
    # (relu of the centre features of the last map, summed) is the sum of |gradient| there, i.e. of the ERF there.
    index = feature_level(model, -1).index
    x = image.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_centre_target(model, x, index), x)
    mask = torch.from_numpy(np.random.default_rng(0).random((32, 32)) < 0.5)
    direction = grad.sign() * mask
    eps = 1e-3
    with torch.no_grad():
        slope = _centre_target(model, image + eps * direction, index) - _centre_target(
            model, image - eps * direction, index
        )
    assert slope.item() / (2 * eps) == pytest.approx(erf[mask.numpy()].sum(), rel=2e-2)


def test_causal_deit_centre_token_ignores_the_patches_after_it():
    size, patch = 64, 16
    causal = _model("deit_tiny_causal", **SMALL_DEIT)
    visible = _model("deit_tiny", **SMALL_DEIT)
    visible.load_state_dict(causal.state_dict())
    images = list(generated_images(causal, (size, size), 1))
    grid = size // patch

    def per_patch(model):
        erf = effective_receptive_field(model, images)
        return erf.reshape(grid, patch, grid, patch).sum((1, 3)).ravel()

    centre = (grid // 2) * grid + grid // 2  # raster index of the centre patch token
    causal_map, visible_map = per_patch(causal), per_patch(visible)
    assert (causal_map[centre + 1 :] == 0).all()
    assert (causal_map[: centre + 1] > 0).all()
    assert (visible_map > 0).all()


def test_log_scale_and_area_ratio_on_known_maps():
    point = np.zeros((9, 9))
    point[4, 4] = 5.0
    assert log_scale(point).max() == 1.0 and log_scale(np.zeros((3, 3))).max() == 0.0
    assert area_ratio(log_scale(point), 0.99) == pytest.approx(1 / 81)
    uniform = np.ones((9, 9))
    # squares of side 1, 3, 5, 7, 9 hold 1, 9, 25, 49, 81 of 81 pixels
    assert [area_ratio(uniform, t) for t in (0.01, 0.2, 0.5, 0.99)] == pytest.approx([1 / 81, 25 / 81, 49 / 81, 1.0])
    shifted = np.zeros((9, 9))
    shifted[1:4, 1:4] = 1.0  # centred on (2, 2), not the image centre: the square follows the centroid
    assert area_ratio(shifted, 0.99) == pytest.approx(9 / 81)
    assert area_ratio(np.zeros((4, 4)), 0.5) == 0.0


def test_save_erf_writes_a_png_and_the_raw_map(tmp_path):
    model = _model("mambaout_test")
    report = save_erf(model, tmp_path / "out" / "erf.png", size=(64, 64), num_images=1)
    png = (tmp_path / "out" / "erf.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    with Image.open(tmp_path / "out" / "erf.png") as img:
        assert img.format == "PNG" and img.width > 200 and img.height > 200
    raw = np.load(tmp_path / "out" / "erf.npy")
    expected = effective_receptive_field(model, generated_images(model, (64, 64), 1))
    np.testing.assert_allclose(raw, expected, rtol=1e-6)
    assert report.num_images == 1 and report.input_size == (64, 64) and report.level.module == "stages.3"
    ratios = list(report.area_ratios.values())
    assert ratios == sorted(ratios) and ratios[0] > 0 and ratios[-1] <= 1
    assert "generated images" in report.format()


def test_cli_writes_the_heat_map(tmp_path, capsys, caplog):
    out = tmp_path / "erf.png"
    assert main(["erf", "mambaout_test", "--img-size", "64", "--num-images", "2", "--output", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_SIGNATURE) and np.load(tmp_path / "erf.npy").shape == (64, 64)
    stdout = capsys.readouterr().out
    assert "2 generated images" in stdout and "20%" in stdout and "99%" in stdout
    assert "random weights" in caplog.text


def test_cli_reads_a_folder_and_skips_unreadable_files(tmp_path, capsys, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(2):
        render("circle", k, 48).save(folder / f"good{k}.png")
    (folder / "broken.jpg").write_bytes(b"not an image at all")
    out = tmp_path / "erf.png"
    assert main(["erf", "mambaout_test", "--images", str(folder), "--img-size", "64", "--output", str(out)]) == 0
    assert out.is_file()
    assert f"2 images from {folder}" in capsys.readouterr().out
    assert "broken.jpg" in caplog.text


@pytest.mark.parametrize(
    "setup, args, message, status",
    [  # exit status: 12 an ERF error, 2 a file that is not there
        ("empty", [], "holds no files", 12),
        ("corrupt", [], "none of the 2 files", 12),
        ("missing", [], "no such folder", 2),
        (None, ["--stage", "4"], "stage 4 is out of range", 12),
        (None, ["--output", "erf.jpg"], "must be a .png", 12),
    ],
)
def test_cli_bad_input_is_a_clear_error(tmp_path, capsys, setup, args, message, status):
    folder = tmp_path / "images"
    if setup in ("empty", "corrupt"):
        folder.mkdir()
    if setup == "corrupt":
        (folder / "a.png").write_bytes(b"")
        (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    argv = ["erf", "mambaout_test", "--img-size", "64", "--num-images", "1", "--output", str(tmp_path / "erf.png")]
    argv += ["--images", str(folder)] if setup else []
    assert main(argv + args) == status
    err = capsys.readouterr().err
    assert err.startswith("error:") or "\nerror:" in err
    assert message in err
    assert not (tmp_path / "erf.png").exists()


def test_cli_token_model_size_must_be_whole_patches(tmp_path, capsys):
    assert main(["erf", "vim_test", "--img-size", "40", "--num-images", "1", "--output", str(tmp_path / "e.png")]) == 6
    assert "divisible by its patch size 16" in capsys.readouterr().err
