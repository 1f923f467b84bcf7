"""The gradio demo: in a real browser (Debian's chromium through Playwright), under concurrent API load, with bad
uploads, unknown models and checkpoints that do not fit."""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mambaout import create_model
from mambaout.apps.demo import (
    CHECKPOINT_PREFIX,
    DemoError,
    ModelPool,
    cached_png,
    check_host,
    classify,
    launch_demo,
    predict_with_saliency,
    resolve_choices,
)
from mambaout.cli import main
from mambaout.data.synthetic import CLASSES, write_dataset
from mambaout.factory import save_checkpoint
from mambaout.tasks.classification.predict import predict_files

SIZE = 32
CHROMIUM = "/usr/bin/chromium"
# Debian's chromium, headless, isolated: no GPU, no background traffic, a fresh profile per test
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
]
NAMES = list(CLASSES)


def png_bomb(path: Path, side: int = 20000) -> Path:
    """An 8-bit grey PNG whose header says side x side (400 MP at 20000). Its IDAT holds only the first rows of
    zeros: a reader that decodes instead of refusing on the header reports a truncated file, not a bomb."""
    raw = zlib.compress(b"\x00" * (side + 1) * 16, 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("demo")
    model = create_model("mambaout_test", num_classes=len(NAMES))
    model.pretrained_cfg["input_size"] = (3, SIZE, SIZE)
    checkpoints = root / "checkpoints"
    checkpoints.mkdir()
    save_checkpoint(model, checkpoints / "tiny.safetensors", class_names=NAMES)
    # recorded as mambaout_test, but holding another family's weights
    wrong = create_model("vim_test", num_classes=len(NAMES))
    wrong.model_name = "mambaout_test"
    save_checkpoint(wrong, checkpoints / "misfit.safetensors", class_names=NAMES)
    write_dataset(root / "shapes", 0, 1, size=48, test_per_class=0)
    good = sorted((root / "shapes" / "val").glob("*/*.png"))[0]
    bad = {
        "not_an_image.png": b"this is text, not a PNG",
        "truncated.png": good.read_bytes()[:60],
        "empty.png": b"",
    }
    for name, data in bad.items():
        (root / name).write_bytes(data)
    png_bomb(root / "bomb.png")
    Image.fromarray(np.arange(48 * 48, dtype=np.uint16).reshape(48, 48) * 20).save(root / "wide16.png")
    Image.new("CMYK", (40, 30), (10, 200, 30, 5)).save(root / "cmyk.jpg")
    return {"root": root, "checkpoints": checkpoints, "good": good, "model": model}


def _expected_top(assets, path: Path) -> str:
    """The class `predict` gives for the image through the same fast path (no compile)."""
    model = create_model("mambaout_test", checkpoint=assets["checkpoints"] / "tiny.safetensors")
    predictions, _ = predict_files(model, [path], topk=1, input_size=(SIZE, SIZE), precision="auto")
    return predictions[0].top[0].label


@pytest.fixture(scope="module")
def pool(assets) -> tuple[ModelPool, str]:
    choices, first = resolve_choices(None, assets["checkpoints"] / "tiny.safetensors", False, assets["checkpoints"])
    return ModelPool(choices, (SIZE, SIZE)), first


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(assets):
    port = free_port()
    examples = assets["root"] / "shapes" / "val"
    checkpoint = assets["checkpoints"] / "tiny.safetensors"
    demo = launch_demo(checkpoint=checkpoint, port=port, examples_dir=examples, input_size=(SIZE, SIZE), block=False)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("not_an_image.png", "not an image"),
        ("truncated.png", "corrupt or truncated"),
        ("empty.png", "empty file"),
        ("bomb.png", "decompression bomb"),
    ],
)
def test_bad_uploads_give_a_readable_status(assets, pool, name, reason):
    result = classify(*pool, assets["root"] / name)
    assert result.label is None and result.status.startswith("Error: ")
    assert name in result.status and reason in result.status


@pytest.mark.parametrize("name", ["wide16.png", "cmyk.jpg"])
def test_odd_modes_are_classified(assets, pool, name):
    result = classify(*pool, assets["root"] / name)
    assert result.label is not None and len(result.label) == 5
    assert set(result.label) <= set(NAMES)
    probabilities = list(result.label.values())
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
    assert result.crop.size == (224, 224)  # the 32x32 crop, shown 7x larger
    assert result.explanation.size == result.crop.size


def test_prediction_agrees_with_predict(assets, pool):
    result = classify(*pool, assets["good"])
    assert max(result.label, key=result.label.get) == _expected_top(assets, assets["good"])
    assert result.status.startswith(_expected_top(assets, assets["good"]))
    assert "48x48 image seen as a 32x32 crop" in result.status


def test_unknown_model_and_misfit_checkpoint_are_reported(assets, pool):
    model_pool, _ = pool
    unknown = classify(model_pool, "mambaout_tinyy", assets["good"])
    assert unknown.label is None and "mambaout_tiny" in unknown.status  # the closest names are suggested
    misfit = classify(model_pool, f"{CHECKPOINT_PREFIX}misfit.safetensors", assets["good"])
    assert misfit.label is None and "does not fit the model" in misfit.status
    outside = classify(model_pool, f"{CHECKPOINT_PREFIX}/etc/passwd", assets["good"])
    assert outside.label is None and "not one of the checkpoints" in outside.status
    # the pool still serves its first model
    assert classify(*pool, assets["good"]).label is not None


def test_refuses_remote_interfaces_and_says_how_to_get_a_model(tmp_path, monkeypatch, capsys):
    check_host("127.0.0.1", False)
    with pytest.raises(DemoError, match="--allow-remote"):
        check_host("0.0.0.0", False)
    monkeypatch.chdir(tmp_path)  # no quickstart_output here
    assert main(["demo"]) == 12
    assert "make quickstart" in capsys.readouterr().err
    assert main(["demo", "--host", "0.0.0.0"]) == 12


def test_misfit_checkpoint_fails_at_start(assets, capsys):
    misfit = str(assets["checkpoints"] / "misfit.safetensors")
    assert main(["demo", "--model", "mambaout_test", "--checkpoint", misfit]) == 4
    assert "does not fit" in capsys.readouterr().err


def test_browser_upload_error_and_recovery(assets, server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install chromium)")
    expected = _expected_top(assets, assets["good"])
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page()
            page.goto(server)
            status = page.locator("#status textarea")

            def upload(path: Path) -> None:
                clear = page.get_by_label("Clear")
                if clear.count():
                    clear.first.click()
                    expect(page.locator("input[type=file]")).to_have_count(1)
                    page.wait_for_timeout(1000)  # the File component re-renders after clearing
                page.locator("input[type=file]").first.set_input_files(str(path))

            upload(assets["good"])
            expect(status).to_have_value(re.compile(f"^{expected} "), timeout=60_000)
            expect(page.locator("#prediction")).to_contain_text(expected)
            page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)

            corrupt = tmp_path / "corrupt.png"
            shutil.copy(assets["root"] / "truncated.png", corrupt)
            upload(corrupt)
            expect(status).to_have_value(re.compile("^Error: corrupt.png: corrupt or truncated"), timeout=60_000)

            upload(assets["good"])
            expect(status).to_have_value(re.compile(f"^{expected} "), timeout=60_000)
        finally:
            browser.close()
    assert (tmp_path / "demo.png").stat().st_size > 10_000


def test_a_shown_image_is_written_once_by_rename_and_never_rewritten_under_a_reader(tmp_path):
    # gradio's cache rewrote the same-content file in place per request: a concurrent download read 0 bytes
    image = Image.fromarray(np.arange(48 * 48 * 3, dtype=np.uint8).reshape(48, 48, 3))
    path = Path(cached_png(image, tmp_path))
    assert path.parent.parent == tmp_path and list(path.parent.iterdir()) == [path]  # no temporary file left
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(image))
    before = path.stat()
    with open(path, "rb") as reader:  # a download in progress
        assert cached_png(image.copy(), tmp_path) == str(path)
        assert reader.read() == path.read_bytes() and len(path.read_bytes()) == before.st_size
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    other = Image.fromarray(np.zeros((48, 48, 3), dtype=np.uint8))
    assert cached_png(other, tmp_path) != str(path) and cached_png(None, tmp_path) is None


def test_shown_images_beyond_the_limit_are_removed_oldest_first_once_old_enough(tmp_path, monkeypatch):
    from mambaout.apps import demo

    monkeypatch.setattr(demo, "SHOWN_IMAGES_KEPT", 3)
    paths = [Path(cached_png(Image.new("RGB", (8, 8), (i, 0, 0)), tmp_path)) for i in range(3)]
    for age, path in zip((3000, 2000, 100), paths):  # the first two are old, the third was just fetched
        os.utime(path, (path.stat().st_atime, path.stat().st_mtime - age))
    newest = Path(cached_png(Image.new("RGB", (8, 8), (9, 0, 0)), tmp_path))
    assert sorted(p.name for p in newest.parent.glob("*.png")) == sorted(p.name for p in [*paths[1:], newest])
    for i in (10, 11):  # over the limit, but nothing else is old enough to go
        cached_png(Image.new("RGB", (8, 8), (i, 0, 0)), tmp_path)
    assert not paths[0].exists() and not paths[1].exists() and paths[2].exists() and newest.exists()
    assert len(list(newest.parent.glob("*.png"))) == 4


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_saliency_is_the_input_gradient_of_the_top_logit_of_the_served_pass(assets, precision):
    import torch

    from mambaout.engine.inference import prepare_for_inference

    model = assets["model"].eval()
    fast = prepare_for_inference(model, fast=True, compile=False, precision=precision, input_size=(SIZE, SIZE))
    assert fast.folded_norms and fast.channels_last  # the pass the demo serves, not the plain model
    tensor = torch.randn(3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    probs, heat = predict_with_saliency(fast, tensor)

    x = tensor.unsqueeze(0).requires_grad_(True)
    logits = model(x)[0]  # the oracle: the eager fp32 model, differentiated for the class the served pass picked
    (grad,) = torch.autograd.grad(logits[int(probs.argmax())], x)
    expected = grad[0].abs().sum(0)
    expected = (expected / expected.max()).numpy()
    assert heat.shape == (SIZE, SIZE) and heat.max() == pytest.approx(1.0)
    if precision == "fp32":  # folding and channels-last are exact up to rounding
        torch.testing.assert_close(probs, logits.detach().softmax(-1), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(heat, expected, atol=1e-4)
    else:  # bf16 keeps 8 bits of mantissa: the same map, to within its rounding
        assert np.corrcoef(heat.ravel(), expected.ravel())[0, 1] > 0.95
        torch.testing.assert_close(probs, logits.detach().softmax(-1), rtol=0, atol=0.02)


def test_concurrent_requests_are_all_answered(assets, server):
    from gradio_client import Client, handle_file

    images = [assets["good"], assets["root"] / "cmyk.jpg", assets["root"] / "empty.png"]
    expected_top = _expected_top(assets, assets["good"])
    # one client per thread, as each visitor has their own: gradio_client's shared event stream loses an event
    # now and then when one Client is driven from several threads at once (a CancelledError inside the client)
    visitors = threading.local()

    def ask(i: int):
        if not hasattr(visitors, "client"):
            visitors.client = Client(server, verbose=False)
        return visitors.client.predict(f"{CHECKPOINT_PREFIX}tiny.safetensors", handle_file(str(images[i % 3])),
                                       api_name="/classify")

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(ask, range(50)))
    assert len(results) == 50
    for i, (label, _, _, status) in enumerate(results):
        if i % 3 == 2:
            assert status.startswith("Error: empty.png: empty file")
        else:
            assert label["label"] in NAMES
            if i % 3 == 0:
                assert label["label"] == expected_top
    assert Client(server, verbose=False).predict(f"{CHECKPOINT_PREFIX}tiny.safetensors",
                                                 handle_file(str(assets["good"])),
                                                 api_name="/classify")[3].startswith(expected_top)


def test_offline_default_serves_the_quickstart_checkpoint_at_its_training_size(assets, tmp_path, monkeypatch):
    import torch

    from mambaout.apps.demo import QUICKSTART_CHECKPOINT, QUICKSTART_EXAMPLES, example_images

    monkeypatch.chdir(tmp_path)
    QUICKSTART_CHECKPOINT.parent.mkdir(parents=True)
    state = {"state_dict": assets["model"].state_dict(), "model_name": "mambaout_test", "class_names": NAMES}
    torch.save(state, QUICKSTART_CHECKPOINT)  # the layout of the training engine's best.pth
    (QUICKSTART_CHECKPOINT.parent / "args.yaml").write_text("model: mambaout_test\nimg_size: 32\n")
    shutil.copytree(assets["root"] / "shapes" / "val", QUICKSTART_EXAMPLES)
    choices, first = resolve_choices(None, None, False, None)
    assert first == f"{CHECKPOINT_PREFIX}best.pth" and choices[0].checkpoint == QUICKSTART_CHECKPOINT
    result = classify(ModelPool(choices), first, assets["good"])  # no input size given: args.yaml's 32
    assert "48x48 image seen as a 32x32 crop" in result.status
    assert max(result.label, key=result.label.get) == _expected_top(assets, assets["good"])
    assert len(example_images(QUICKSTART_EXAMPLES)) == len(NAMES)
